//! `ringway import-nginx FILE`: an nginx configuration in front of nodes,
//! as a ringway config. Sans-io: text in, the TOML and the notes out.
//!
//! Carried over: `listen`, `ssl_certificate(_key)`, `proxy_pass` (a URL, or
//! an `upstream {}` block with several servers, `weight`, `backup`),
//! `limit_req_zone`/`limit_req` (rate, burst, key), `limit_conn`,
//! `proxy_read_timeout`. Everything else is listed in the notes with the
//! reason it is not carried over (what ringway does instead, or why rustls
//! has no such knob). Access rules on the way to a proxied location
//! (`allow`, `deny`, `auth_basic`, ...) are never dropped in silence: the
//! conversion fails naming them, unless `--allow-open` says to go on.

mod convert;
mod include;
mod out;
mod servers;
mod syntax;

pub use include::import_file;
pub use out::Imported;

/// Convert nginx configuration text. An error when there is no `server`
/// block that proxies to a node, or when an access rule (`allow`, `deny`,
/// `auth_basic`, `auth_request`, `satisfy`, `limit_except`) guards a
/// proxied location and not `allow_open` (the converted file would open
/// it to everyone).
pub fn import(text: &str, allow_open: bool) -> Result<Imported, String> {
    convert::convert(&syntax::parse(text)?, Vec::new(), allow_open)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_000: &str = r#"
server {
        server_name rpc.example.com;
        root /var/www/html;
        index index.html;
        location / {
          try_files $uri $uri/ =404;
          proxy_buffering off;
          proxy_pass http://localhost:9944;
          proxy_set_header X-Real-IP $remote_addr;
          proxy_set_header Host $host;
          proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
          proxy_http_version 1.1;
          proxy_set_header Upgrade $http_upgrade;
          proxy_set_header Connection "upgrade";
        }
        listen [::]:443 ssl ipv6only=on;
        listen 443 ssl;
        ssl_certificate /etc/letsencrypt/live/rpc.example.com/fullchain.pem;
        ssl_certificate_key /etc/letsencrypt/live/rpc.example.com/privkey.pem;
        ssl_session_cache shared:cache_nginx_SSL:1m;
        ssl_session_timeout 1440m;
        ssl_protocols TLSv1 TLSv1.1 TLSv1.2;
        ssl_prefer_server_ciphers on;
        ssl_ciphers "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256";
        ssl_dhparam /etc/ssl/certs/dhparam.pem;
}
"#;

    #[test]
    fn the_polkadot_wiki_server_block_converts() {
        let i = import(SEED_000, false).unwrap();
        assert!(i.toml.contains("listen = \"0.0.0.0:443\""), "{}", i.toml);
        assert!(i
            .toml
            .contains("cert = \"/etc/letsencrypt/live/rpc.example.com/fullchain.pem\""));
        assert!(i
            .toml
            .contains("key = \"/etc/letsencrypt/live/rpc.example.com/privkey.pem\""));
        assert!(i.toml.contains("[[node]]\nurl = \"ws://localhost:9944\""));
        let notes = i.notes.join("\n");
        for directive in [
            "ssl_ciphers",
            "ssl_dhparam",
            "TLSv1 and TLSv1.1 are not offered",
            "proxy_set_header",
            "try_files",
            "server_name",
        ] {
            assert!(notes.contains(directive), "{directive}: {notes}");
        }
        let file: crate::config::FileConfig = toml::from_str(&i.toml).unwrap();
        assert_eq!(
            file.tls.cert,
            "/etc/letsencrypt/live/rpc.example.com/fullchain.pem"
        );
    }

    #[test]
    fn upstream_pools_rate_limits_and_timeouts_convert() {
        let conf = r#"
http {
  limit_req_zone $http_x_forwarded_for zone=rpc:10m rate=120r/m;
  limit_conn_zone $binary_remote_addr zone=perip:10m;
  upstream nodes {
    server 10.0.0.11:9944 weight=3;
    server 10.0.0.12:9944;
    server 10.0.0.13:9944 backup;
  }
  server {
    listen 80;
    return 301 https://$host$request_uri;
  }
  server {
    listen 8443 ssl;
    ssl_certificate /c.pem; ssl_certificate_key /k.pem;
    location /rpc {
      limit_req zone=rpc burst=5 nodelay;
      limit_conn perip 50;
      proxy_read_timeout 2m;
      proxy_pass http://nodes/;
    }
  }
}"#;
        let i = import(conf, false).unwrap();
        let file: crate::config::FileConfig = toml::from_str(&i.toml).unwrap();
        assert_eq!(file.server.listen, "0.0.0.0:8443");
        assert_eq!(file.server.redirect_listen, "0.0.0.0:80");
        assert_eq!((file.admission.rate, file.admission.burst), (2.0, 5.0));
        assert_eq!(file.admission.trusted_proxy_hops, 1);
        assert_eq!(file.admission.max_connections_per_ip, 50);
        assert_eq!(file.limits.idle_timeout_s, 120);
        let urls: Vec<_> = file
            .node
            .iter()
            .map(|n| (n.url.as_str(), n.weight))
            .collect();
        assert_eq!(
            urls,
            [
                ("ws://10.0.0.11:9944/", Some(3)),
                ("ws://10.0.0.12:9944/", None),
                ("ws://10.0.0.13:9944/", None)
            ]
        );
        let notes = i.notes.join("\n");
        assert!(
            notes.contains("backup")
                && notes.contains("nodelay")
                && notes.contains("location /rpc"),
            "{notes}"
        );
    }

    #[test]
    fn broken_configs_say_what_is_wrong() {
        assert!(import("server { listen 443", false)
            .unwrap_err()
            .contains("not closed"));
        assert!(import("}", false).unwrap_err().contains("without its"));
        assert!(import("events {}", false)
            .unwrap_err()
            .contains("no server block"));
        assert!(import("server { listen \"443 }", false)
            .unwrap_err()
            .contains("quoted"));
    }

    /// Guards import-nginx's access rules: `allow`/`deny`, `auth_basic`,
    /// `auth_request` and `limit_except` on a proxying location became an
    /// open chain, with a note only.
    #[test]
    fn access_rules_on_a_proxied_location_stop_the_conversion_unless_allowed() {
        let guarded = [
            "allow 10.0.0.0/8;\n      deny all;",
            "auth_basic \"rpc\";\n      auth_basic_user_file /etc/nginx/htpasswd;",
            "auth_request /auth;",
            "satisfy any;",
            "limit_except POST { deny all; }",
        ];
        for rules in guarded {
            let conf = format!(
                "server {{\n  listen 443 ssl;\n  location / {{\n      {rules}\n      proxy_pass http://localhost:9944;\n  }}\n}}\n"
            );
            let e = import(&conf, false).unwrap_err();
            assert!(e.starts_with("line 4: `"), "{rules}: {e}");
            assert!(e.contains("--allow-open"), "{e}");
            let i = import(&conf, true).unwrap();
            assert!(
                i.notes.iter().any(|n| n.starts_with("warning: line 4:")),
                "{:?}",
                i.notes
            );
        }
        // On the server: it guards its proxied locations too.
        let conf = "server {\n  listen 443;\n  deny 1.2.3.4;\n  location / { proxy_pass http://localhost:9944; }\n}\n";
        assert!(import(conf, false).unwrap_err().starts_with("line 3:"));
        // A location that proxies nothing may keep its rules.
        let conf = "server {\n  listen 443;\n  location /status { allow 127.0.0.1; deny all; }\n  location / { proxy_pass http://localhost:9944; }\n}\n";
        assert!(import(conf, false).is_ok());
    }
}
