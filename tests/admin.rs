//! The admin plane (the metrics listener's `/usage`, `POST /keys/...` and
//! what `/health` shows) answers the operator only: no web page (a
//! cross-site POST is a CORS simple request), no rebound DNS name, and,
//! with `server.admin_token_file`, no one without the token.

mod common;

use std::io::Write;

use common::*;

const ACME: &str = "acme-0123456789abcdef0";

/// A gateway with key `acme` and a metrics listener (`server` continues
/// the `[server]` table), in front of a node whose URL has a secret path.
fn gateway(pki: &TestPki, server: &str) -> (Gateway, String, Upstream) {
    let node = Upstream::start(Behaviour::Echo);
    let keys = write_config(
        pki,
        "admin-keys.toml",
        &format!("[[key]]\nname = \"acme\"\nkey = \"{ACME}\"\n"),
    );
    let cfg = write_config(
        pki,
        "admin.toml",
        &format!(
            "[server]\nmetrics_listen = \"127.0.0.1:0\"\n{server}\n[keys]\nfile = \"{}\"\n[[node]]\nurl = \"{}/s3cret-path\"\n",
            keys.display(),
            node.url()
        ),
    );
    let gw = Gateway::start(pki, &[], &["--config", cfg.to_str().unwrap()]);
    let metrics = printed_addr(&gw, "metrics on http://");
    (gw, metrics, node)
}

/// `METHOD path` to the metrics listener with `headers` (each ending CRLF).
fn ask(addr: &str, method: &str, path: &str, headers: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\n{headers}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s)
}

/// Whether `acme` still opens a session (it is not disabled).
fn acme_admitted(gw: &Gateway, pki: &TestPki) -> bool {
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.write_all(upgrade_request(&format!("/{ACME}"), |_| {}).as_bytes())
        .unwrap();
    read_response(&mut s).0 == 101
}

/// Guards the admin plane from web pages and DNS rebinding: a body-less
/// POST from any page the operator had open disabled keys (a CORS simple
/// request), and `/usage` answered any Host.
#[test]
fn a_cross_site_request_gets_403_and_a_foreign_host_421_and_nothing_changes() {
    let pki = TestPki::new();
    let (gw, m, _node) = gateway(&pki, "");
    let own = format!("Host: {m}\r\n");
    for page in [
        "Origin: https://evil.example\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
    ] {
        let (status, _, body) = ask(&m, "POST", "/keys/acme/disable", &format!("{own}{page}"));
        assert_eq!(status, 403, "{page}: {body}");
        let (status, _, _) = ask(&m, "GET", "/usage", &format!("{own}{page}"));
        assert_eq!(status, 403, "{page}");
    }
    for host in ["Host: evil.example\r\n", "Host: evil.example:9100\r\n", ""] {
        let (status, _, body) = ask(&m, "POST", "/keys/acme/disable", host);
        assert_eq!(status, 421, "{host:?}: {body}");
        let (status, _, _) = ask(&m, "GET", "/usage", host);
        assert_eq!(status, 421, "{host:?}");
    }
    assert!(acme_admitted(&gw, &pki), "nothing was disabled");
    // A rebound name sees the nodes by their public names only.
    let (status, _, body) = ask(&m, "GET", "/health", "Host: evil.example\r\n");
    assert_eq!(status, 200);
    assert!(!body.contains("s3cret"), "{body}");
    let (_, _, body) = ask(&m, "GET", "/health", &own);
    assert!(
        body.contains("s3cret-path"),
        "this host sees them in full: {body}"
    );
    // The operator, from this host, naming the listener: served.
    let (status, _, body) = ask(&m, "POST", "/keys/acme/disable", &own);
    assert_eq!(status, 200, "{body}");
    wait_for(TIMEOUT, "acme disabled", || !acme_admitted(&gw, &pki));
    let (status, _, _) = ask(
        &m,
        "GET",
        "/usage",
        &format!("Host: localhost:{}\r\n", m.rsplit(':').next().unwrap()),
    );
    assert_eq!(status, 200);
}

/// With `server.admin_token_file`, `/usage` and `POST /keys/...` need the
/// token (401 without it, with a Bearer challenge), whatever the Host.
#[test]
fn with_a_token_file_the_admin_plane_needs_the_token() {
    let pki = TestPki::new();
    let token = "a-long-token-0123456789";
    let file = write_config(&pki, "admin-token", &format!("{token}\n"));
    let (gw, m, _node) = gateway(&pki, &format!("admin_token_file = \"{}\"", file.display()));
    let own = format!("Host: {m}\r\n");
    let (status, head, _) = ask(&m, "POST", "/keys/acme/disable", &own);
    assert_eq!(status, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    let wrong = format!("{own}Authorization: Bearer a-long-token-0123456780\r\n");
    assert_eq!(ask(&m, "GET", "/usage", &wrong).0, 401);
    assert!(acme_admitted(&gw, &pki));
    let right = format!("{own}Authorization: Bearer {token}\r\n");
    assert_eq!(ask(&m, "GET", "/usage", &right).0, 200);
    assert_eq!(ask(&m, "POST", "/keys/acme/disable", &right).0, 200);
    wait_for(TIMEOUT, "acme disabled", || !acme_admitted(&gw, &pki));
    // /metrics stays Prometheus's, without the token.
    assert_eq!(ask(&m, "GET", "/metrics", &own).0, 200);
    // A token file that cannot be read stops the configuration, naming the key.
    let bad = write_config(
        &pki,
        "bad.toml",
        "[server]\nadmin_token_file = \"/nonexistent/token\"\n",
    );
    let out = check_config(bad.to_str().unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("server.admin_token_file"),
        "{stderr}"
    );
}
