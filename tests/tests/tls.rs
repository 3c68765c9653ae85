//! Mutual TLS on the broker's gRPC port, end to end: the broker makes its CA
//! on first start, allotctl and node daemons present certificates, a
//! certificate's common name is an identity grants apply to, a node
//! certificate binds its daemon to its node, and replaced files are served
//! without a restart.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use allot_tests::{
    Broker, StoreKind, allotctl, allotctl_json, binary, issue_certificate, start_node, start_tls_broker, tls_args,
    wait_until,
};

/// allotctl against the broker with exactly these TLS arguments, no token.
fn allotctl_tls(broker: &Broker, tls: &[String], args: &[&str]) -> Output {
    Command::new(binary("allotctl"))
        .arg("--broker")
        .arg(&broker.url)
        .args(tls)
        .args(args)
        // No token and no default files: only what the test passes counts.
        .env("XDG_CONFIG_HOME", broker.pki.as_ref().expect("pki").join("no-defaults"))
        .env_remove("ALLOT_TOKEN")
        .env_remove("ALLOT_TOKEN_FILE")
        .output()
        .expect("allotctl runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn team_names(broker: &Broker) -> Vec<String> {
    let teams = allotctl_json(broker, &["team", "list"]);
    teams.as_array().expect("teams").iter().map(|team| team["name"].as_str().expect("name").to_owned()).collect()
}

fn pki_init(dir: &Path) {
    let output =
        Command::new(binary("allot-broker")).args(["pki", "init", "--pki"]).arg(dir).output().expect("pki init runs");
    assert!(output.status.success(), "pki init: {}", stderr(&output));
}

#[test]
fn only_clients_with_a_certificate_from_the_brokers_ca_get_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_tls_broker(&StoreKind::Embedded(dir.path().join("store")), dir.path(), "broker");
    assert!(broker.url.starts_with("https://"), "{}", broker.url);
    let pki = broker.pki.clone().expect("pki");
    for file in ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "admin.pem", "admin-key.pem"] {
        assert!(pki.join(file).is_file(), "the broker did not create {file}");
    }
    // The admin's certificate, without a token, is the admin.
    let admin = tls_args(&broker, Some(&pki.join("admin")));
    let made = allotctl_tls(&broker, &admin, &["team", "create", "ml"]);
    assert!(made.status.success(), "the admin's certificate was refused: {}", stderr(&made));

    // No client certificate: refused, and nothing changes.
    let ca_only = tls_args(&broker, None);
    let refused = allotctl_tls(&broker, &ca_only, &["team", "create", "intruders"]);
    assert!(!refused.status.success(), "a client without a certificate got in");
    // A certificate from another CA: refused.
    let other = dir.path().join("other-pki");
    pki_init(&other);
    let foreign = vec![
        "--ca".to_owned(),
        pki.join("ca.pem").display().to_string(),
        "--cert".to_owned(),
        other.join("admin.pem").display().to_string(),
        "--key".to_owned(),
        other.join("admin-key.pem").display().to_string(),
    ];
    let refused = allotctl_tls(&broker, &foreign, &["team", "create", "intruders"]);
    assert!(!refused.status.success(), "a certificate from another CA got in");
    // Plain text to a TLS port: refused.
    let plain = Command::new(binary("allotctl"))
        .args(["--broker", &format!("http://{}", broker.grpc), "team", "create", "intruders"])
        .env("ALLOT_TOKEN_FILE", &broker.admin_token)
        .output()
        .expect("allotctl runs");
    assert!(!plain.status.success(), "a plain-text client got in");
    // A broker certificate the client's CA did not sign: refused by the client.
    let wrong_ca = vec!["--ca".to_owned(), other.join("ca.pem").display().to_string()];
    let refused = allotctl_tls(&broker, &[wrong_ca, admin[2..].to_vec()].concat(), &["team", "list"]);
    assert!(!refused.status.success(), "allotctl trusted a broker its CA did not sign");
    assert_eq!(team_names(&broker), vec!["ml".to_owned()], "a refused client changed something");

    // A certificate's subject is an identity that grants apply to, as a token's is.
    let alice = issue_certificate(&broker, &["--subject", "alice"], &dir.path().join("alice"));
    let alice_tls = tls_args(&broker, Some(&alice));
    let denied = allotctl_tls(&broker, &alice_tls, &["alloc", "list", "--team", "ml"]);
    assert!(!denied.status.success(), "alice has no grant yet");
    assert!(stderr(&denied).contains("alice may not"), "{}", stderr(&denied));
    allotctl_json(&broker, &["policy", "grant", "alice", "member", "--team", "ml"]);
    let allowed = allotctl_tls(&broker, &alice_tls, &["alloc", "list", "--team", "ml"]);
    assert!(allowed.status.success(), "alice's grant did not apply to her certificate: {}", stderr(&allowed));
    // The audit log names her.
    let _ = allotctl_tls(&broker, &alice_tls, &["team", "create", "alices-team"]);
    let audit = allotctl_json(&broker, &["audit", "--subject", "alice"]);
    assert!(audit.to_string().contains("alices-team"), "{audit}");

    // A node certificate is not a person's: `pki issue` refuses to make a person named node:x.
    let output = Command::new(binary("allot-broker"))
        .args(["pki", "issue", "--pki"])
        .arg(&pki)
        .args(["--subject", "node:gpu-1"])
        .output()
        .expect("pki issue runs");
    assert!(!output.status.success() && stderr(&output).contains("--node"), "{}", stderr(&output));
}

#[test]
fn a_node_daemon_registers_only_as_the_node_its_certificate_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_tls_broker(&StoreKind::Embedded(dir.path().join("store")), dir.path(), "broker");
    // The harness gives each node daemon a certificate for its own name, and no token.
    let _node_a = start_node(&broker, "dgx-h100", "node-a", dir.path());
    wait_until("node-a is ready", Duration::from_secs(30), || {
        allot_tests::node_statuses(&broker).iter().any(|(name, status)| name == "node-a" && status == "ready")
    });
    // node-a's certificate used to register as node-b.
    let a = dir.path().join("node-a-node");
    let output = Command::new(binary("allot-node"))
        .args(["run", "--broker", &broker.url, "--fixture", "dgx-h100", "--name", "node-b", "--no-enforce"])
        .args(tls_args(&broker, Some(&a)))
        .output()
        .expect("allot-node runs");
    assert!(!output.status.success(), "a daemon registered under another node's certificate");
    let text = stderr(&output);
    assert!(text.contains("certificate is for node node-a") && text.contains("node-b"), "{text}");
    let names: Vec<String> = allot_tests::node_statuses(&broker).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, vec!["node-a".to_owned()]);
    // The audit log shows the refusal and who tried.
    let audit = allotctl_json(&broker, &["audit", "--subject", "node:node-a"]);
    assert!(audit.to_string().contains("denied"), "{audit}");
}

#[test]
fn replaced_certificates_are_served_without_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_tls_broker(&StoreKind::Embedded(dir.path().join("store")), dir.path(), "broker");
    let pki = broker.pki.clone().expect("pki");
    let old = dir.path().join("old");
    std::fs::create_dir_all(&old).expect("dir");
    for file in ["ca.pem", "admin.pem", "admin-key.pem"] {
        std::fs::copy(pki.join(file), old.join(file)).expect("copy");
    }
    let with = |root: &Path| {
        vec![
            "--ca".to_owned(),
            root.join("ca.pem").display().to_string(),
            "--cert".to_owned(),
            root.join("admin.pem").display().to_string(),
            "--key".to_owned(),
            root.join("admin-key.pem").display().to_string(),
        ]
    };
    assert!(allotctl_tls(&broker, &with(&old), &["team", "list"]).status.success());
    // A new CA and certificates are put in place while the broker runs.
    let fresh = dir.path().join("fresh");
    pki_init(&fresh);
    for file in ["server-key.pem", "server.pem", "ca.pem", "admin.pem", "admin-key.pem", "ca-key.pem"] {
        let partial = pki.join(format!("{file}.new"));
        std::fs::copy(fresh.join(file), &partial).expect("copy");
        std::fs::rename(&partial, pki.join(file)).expect("rename");
    }
    wait_until("the broker serves the new certificate", Duration::from_secs(10), || {
        allotctl_tls(&broker, &with(&fresh), &["team", "list"]).status.success()
    });
    let stale = allotctl_tls(&broker, &with(&old), &["team", "list"]);
    assert!(!stale.status.success(), "the old CA's certificate still gets in after the CA was replaced");
    assert!(broker.process.log_text().contains("loaded them again"), "{}", broker.process.log_text());
    // A broken replacement is refused and the working files stay in use.
    std::fs::write(pki.join("server.pem"), "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        .expect("write");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(allotctl_tls(&broker, &with(&fresh), &["team", "list"]).status.success(), "a broken file took effect");
    assert!(broker.process.log_text().contains("still serving with the previous ones"));
    // The admin helper of the harness still works (it reads the files in the PKI directory).
    assert!(allotctl(&broker, &["team", "list"]).status.success());
}
