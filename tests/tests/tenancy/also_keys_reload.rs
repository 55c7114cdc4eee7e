//! The API keys file is read again on SIGHUP: a key added works, a key removed is refused, from
//! the next request on, without a restart.

use std::time::Duration;

use formstream_core::api::keys::hash_key;
use formstream_tests::{GatewayOptions, spawn_gateway, wait_until};
use reqwest::Method;

fn keys_file(entries: &[(&str, &str, &str)]) -> String {
    entries
        .iter()
        .map(|(organisation, name, key)| {
            format!(
                "[[keys]]\norganisation = \"{organisation}\"\nname = \"{name}\"\nsha256 = \"{}\"\n\n",
                hex::encode(hash_key(key))
            )
        })
        .collect()
}

#[tokio::test]
async fn sighup_reloads_the_api_keys() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("keys.toml");
    let (old, new) = ("reload-old-key-1b2c", "reload-new-key-7d8e");
    std::fs::write(&path, keys_file(&[("acme", "old", old)])).expect("writing keys");
    let gateway =
        spawn_gateway(GatewayOptions::default().arg("--api-keys-file", path.display())).await;
    let status = |key: &'static str| {
        let request = gateway.as_key(key, Method::GET, "/v1/forms");
        async move {
            request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(status(old).await, 200);
    assert_eq!(status(new).await, 401);

    // The old key revoked, the new one added; then SIGHUP to this process (the gateway's).
    std::fs::write(&path, keys_file(&[("acme", "new", new)])).expect("rewriting keys");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let reloaded = wait_until(Duration::from_secs(10), || async {
        status(new).await == 200 && status(old).await == 401
    })
    .await;
    assert!(
        reloaded,
        "after SIGHUP the new key works and the old one is refused"
    );
    gateway.finish().await;
}
