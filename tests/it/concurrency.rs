//! Many processes writing one database at once: no write is lost (the serial proves it)
//! and none fails with "database is locked".

use crate::util::Env;

#[test]
fn eight_processes_two_hundred_writes_each() {
    const WORKERS: usize = 8;
    const WRITES: usize = 200;
    let env = Env::new();
    env.init("shared");
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let env = &env;
            s.spawn(move || {
                for i in 0..WRITES {
                    let pair = format!("worker_{w}={i}");
                    let r = env.run("update-state", &["shared", "meta", &pair]);
                    assert_eq!(r.code, 0, "worker {w} write {i}: {}", r.stderr);
                    assert!(r.stderr.is_empty(), "worker {w} write {i}: {}", r.stderr);
                }
            });
        }
    });
    let j = env.state("shared");
    let total = (WORKERS * WRITES) as u64;
    assert_eq!(j["serial"], 1 + total, "lost writes");
    let history = j["history"].as_array().unwrap();
    assert_eq!(history.len() as u64, 1 + total);
    // Serials are exactly 1..=N with no gap or repeat.
    let mut serials: Vec<u64> = history
        .iter()
        .map(|e| e["serial"].as_u64().unwrap())
        .collect();
    serials.sort_unstable();
    assert_eq!(serials, (1..=1 + total).collect::<Vec<_>>());
    for w in 0..WORKERS {
        assert_eq!(
            j["metadata"][format!("worker_{w}")],
            (WRITES - 1).to_string()
        );
    }
}

#[test]
fn concurrent_first_open_of_a_fresh_database() {
    // Eight processes race to create and migrate the same new file; three fresh files,
    // since one round may not hit the race.
    for _ in 0..3 {
        let env = Env::new();
        std::thread::scope(|s| {
            for w in 0..8 {
                let env = &env;
                s.spawn(move || {
                    let id = format!("b{w}");
                    env.run("init-state", &[&id, "--cloud", "aws", "--image", "x"])
                        .ok();
                });
            }
        });
        for w in 0..8 {
            assert_eq!(env.state(&format!("b{w}"))["serial"], 1);
        }
    }
}
