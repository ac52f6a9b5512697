//! Issue 31: certificates that come and renew by themselves. Pebble, the ACME test server Let's
//! Encrypt publishes (Debian's `pebble`), issues each node a certificate for its own address
//! after validating a real HTTP-01 challenge on the node's plain port (no
//! `PEBBLE_VA_ALWAYS_VALID`). Each node has an address of its own on loopback (127.0.0.1–3), so
//! all three answer on the one port pebble validates against.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use crate::tls::{Pki, answers_within, peer_cert, trusting};

fn pebble() -> Option<&'static str> {
    if Path::new("/usr/bin/pebble").exists() {
        return Some("/usr/bin/pebble");
    }
    assert!(
        std::env::var("CI").is_err(),
        "pebble is not installed (apt-get install pebble; scripts/test.sh does)"
    );
    eprintln!("SKIPPED: pebble is not installed");
    None
}

fn acme_flags(dir: &Path, ip: &str, directory: &str, pki: &Pki, root: &Path) -> Vec<String> {
    [
        "--acme-domains",
        ip,
        "--acme-directory-url",
        directory,
        "--acme-ca-file",
        pki.ca_file.to_str().unwrap(),
        "--acme-dir",
        dir.join(format!("acme-{ip}")).to_str().unwrap(),
        "--acme-retry-ms",
        "1000",
        "--tls-ca-file",
        root.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_and_two_slaves_get_certificates_from_pebble_by_http01_and_one_renews() {
    let Some(pebble) = pebble() else { return };
    let test = "acme_pebble";
    let dir = log_dir(test);
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("acme-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    // Pebble's own HTTPS uses a certificate from the test's CA, which the nodes trust for the
    // ACME directory only (ACME_CA_FILE).
    let pki = Pki::new(&dir);
    let (pc, pk, _) = pki.leaf("pebble", &["127.0.0.1", "localhost"]);
    let (api, mgmt, http01) = (free_port(), free_port(), free_port());
    let config = dir.join("pebble.json");
    std::fs::write(
        &config,
        serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": pc, "privateKey": pk,
            "httpPort": http01, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }})
        .to_string(),
    )
    .unwrap();
    let mut cmd = Command::new(pebble);
    cmd.args(["-config", config.to_str().unwrap()])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env_remove("PEBBLE_VA_ALWAYS_VALID");
    let pebble = Proc::spawn("pebble", dir.join("pebble.log"), &mut cmd);
    let c = trusting(&pki.ca_file);
    assert!(
        answers_within(&c, &format!("https://127.0.0.1:{api}/dir"), 15).await,
        "pebble did not start: {}",
        pebble.log_text()
    );
    // The root pebble signs with (made at its start): what the nodes verify each other by.
    let root = dir.join("pebble-root.pem");
    let pem = c
        .get(format!("https://127.0.0.1:{mgmt}/roots/0"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::write(&root, pem).unwrap();
    let directory = format!("https://127.0.0.1:{api}/dir");

    // The master on 127.0.0.1, the slaves on 127.0.0.2 and .3; every plain port is the one
    // pebble validates HTTP-01 on.
    let ms = free_port();
    let mut cmd = Command::new(BIN);
    cmd.arg("master")
        .args(["--bind", &format!("127.0.0.1:{http01}")])
        .args(["--https-bind", &format!("127.0.0.1:{ms}")])
        .args(["--jwt-key-file", dir.join("jwt.pem").to_str().unwrap()])
        .args(["--heartbeat-interval-ms", "300"])
        .args(acme_flags(&dir, "127.0.0.1", &directory, &pki, &root))
        .env("CLUSTER_SECRET", SECRET)
        .env("TEACHER_PASSWORD", TEACHER)
        .env("LOG", "info");
    let _master = Proc::spawn("master", dir.join("master.log"), &mut cmd);
    let mut slaves: Vec<(Proc, String, u16)> = Vec::new();
    for (id, ip) in [("s1", "127.0.0.2"), ("s2", "127.0.0.3")] {
        let https = free_port();
        let mut cmd = Command::new(BIN);
        cmd.arg("slave")
            .args(["--master-url", &format!("https://127.0.0.1:{ms}")])
            .args(["--node-id", id])
            .args(["--rtmp-plain", "false"])
            .args(["--rtmps-bind", &format!("{ip}:{}", free_port())])
            .args(["--http-bind", &format!("{ip}:{http01}")])
            .args(["--https-bind", &format!("{ip}:{https}")])
            .args(["--public-host", ip])
            .args(["--heartbeat-interval-ms", "300"])
            .args([
                "--webrtc-udp-port",
                "0",
                "--webrtc-tcp",
                "false",
                "--drain-ms",
                "300",
            ])
            .args([
                "--record-dir",
                dir.join(format!("rec-{id}")).to_str().unwrap(),
            ])
            .args(acme_flags(&dir, ip, &directory, &pki, &root))
            .env("CLUSTER_SECRET", SECRET)
            .env("LOG", "info");
        // s2 renews every certificate as soon as the retry interval allows: a renewal to watch.
        if id == "s2" {
            cmd.args(["--acme-renew-before-days", "100000"]);
        }
        slaves.push((
            Proc::spawn(id, dir.join(format!("{id}.log")), &mut cmd),
            ip.to_string(),
            https,
        ));
    }

    // Each node serves a certificate pebble issued for its own address (verified against
    // pebble's root and the address), and the slaves registered with the master over HTTPS.
    let nodes = trusting(&root);
    let mut urls = vec![format!("https://127.0.0.1:{ms}/health")];
    urls.extend(
        slaves
            .iter()
            .map(|(_, ip, p)| format!("https://{ip}:{p}/health")),
    );
    for u in &urls {
        assert!(
            wait_until(Duration::from_secs(30), || async {
                nodes.get(u).send().await.is_ok_and(|r| r.status() == 200)
            })
            .await,
            "{u} never served a certificate from pebble"
        );
    }
    assert!(
        wait_until(Duration::from_secs(30), || async {
            get_json(&nodes, &format!("https://127.0.0.1:{ms}/cluster/nodes"))
                .await
                .is_some_and(|v| v["healthy_nodes"] == 2)
        })
        .await,
        "the slaves did not register over HTTPS"
    );
    // Pebble really connected to each node's plain port for its challenge.
    let log = pebble.log_text();
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        assert!(
            log.contains(&format!(
                "Attempting to validate w/ HTTP: http://{ip}:{http01}/.well-known/acme-challenge/"
            )),
            "pebble did not validate {ip}: {log}"
        );
    }
    // The account key and the certificate are kept 0600, in a 0700 folder.
    let kept: PathBuf = dir.join("acme-127.0.0.1");
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in ["account.json", "127.0.0.1.crt.pem", "127.0.0.1.key.pem"] {
        let m = std::fs::metadata(kept.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, 0o600, "{f} is {m:o}");
    }

    // s2 renews: a new connection gets a new certificate, with no restart, while a
    // connection opened before keeps working.
    let s2 = &urls[2];
    let first = peer_cert(&nodes.get(s2).send().await.unwrap());
    assert!(
        wait_until(Duration::from_secs(30), || async {
            trusting(&root)
                .get(s2)
                .send()
                .await
                .is_ok_and(|r| peer_cert(&r) != first)
        })
        .await,
        "s2 never served a renewed certificate"
    );
    let r = nodes.get(s2).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        peer_cert(&r),
        first,
        "the connection opened before the renewal was dropped"
    );
    assert!(
        slaves[1].0.child.try_wait().unwrap().is_none(),
        "s2 restarted"
    );
}
