//! TLS is rustls with ring's crypto (not aws-lc's: docs/decisions.md): in a fresh
//! process, opening a remote makes HTTPS clients work; they get as far as connecting.
//! (A process of its own: the provider is process-wide.)

#[test]
fn https_clients_have_a_tls_provider_once_a_remote_is_opened() {
    let o = buildstate::remote::RemoteOptions::default();
    buildstate::remote::Remote::open("s3://bucket/prefix", o).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder().build().unwrap();
    let e = rt
        .block_on(client.get("https://127.0.0.1:9/").send())
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");
}
