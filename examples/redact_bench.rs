//! `scripts/bench redact`: the cost of redacting a typical 200-byte failure message and a
//! 1 MB one, against a baseline measured in the same run (lower-casing the same text,
//! the least any case-insensitive scan does), and the one-time cost of loading the rules
//! in a process. Build with `--release`.

use std::hint::black_box;
use std::time::Instant;

use buildstate::redact::redact;

/// Median microseconds per call of `f`, over 9 batches of `n` calls.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let mut batches: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        })
        .collect();
    batches.sort_by(|a, b| a.total_cmp(b));
    batches[4]
}

fn main() {
    let typical = "command exited with code 128: fatal: unable to access \
        'https://git.example.com/infra/images.git/': Could not resolve host: \
        git.example.com (while cloning roles for ansible-base); attempt 2 of 5";
    let with_secret = format!("{typical}; ansible_become_pass=Sup3r was rejected");
    let mut big = String::new();
    let mut i = 0;
    while big.len() < 1 << 20 {
        big.push_str(&format!(
            "TASK [users : create account {i}] ok: [host-{i}] => changed=false, item=svc{i}\n"
        ));
        if i % 5000 == 0 {
            big.push_str("debug: token=abc123def456 password: hunter2\n");
        }
        i += 1;
    }

    let once = |text: &str| {
        let t = Instant::now();
        black_box(redact(black_box(text)));
        t.elapsed().as_secs_f64() * 1e6
    };
    let load = once("state 20 failed: exit code 2");
    let first = once(typical);

    let rows = [
        ("typical 200 B, no secret", typical.to_string(), 20_000),
        ("200 B with a secret", with_secret, 20_000),
        ("1 MB log with secrets", big, 5),
    ];
    println!("first call in a process (loads the rules): {load:.0} us");
    println!("first message with a URL (compiles that rule's pattern): {first:.0} us");
    println!(
        "{:<28} {:>12} {:>14} {:>7}",
        "message", "redact (us)", "lowercase (us)", "ratio"
    );
    for (name, text, n) in rows {
        let r = per_call(n, || {
            black_box(redact(black_box(&text)));
        });
        let b = per_call(n, || {
            black_box(black_box(&text).to_ascii_lowercase());
        });
        println!("{name:<28} {r:>12.2} {b:>14.2} {:>6.1}x", r / b);
    }
}
