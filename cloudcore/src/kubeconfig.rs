//! `cloudcore kubeconfig`: a kubeconfig that works as is, with the CA embedded and either a
//! client certificate (the default, as kubeadm's admin.conf) or a bearer token.

use base64::Engine;

/// How the kubeconfig's user proves who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A client certificate and its key (PEM).
    Certificate {
        /// Certificate PEM.
        cert_pem: String,
        /// Private key PEM.
        key_pem: String,
    },
    /// A bearer token.
    Token(String),
}

/// Renders a kubeconfig for `user` against `server` (an `https://` URL), trusting `ca_pem`.
pub fn render(server: &str, ca_pem: &str, user: &str, credential: &Credential) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let user_block = match credential {
        Credential::Certificate { cert_pem, key_pem } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(cert_pem),
            b64(key_pem)
        ),
        Credential::Token(t) => format!("    token: {t}\n"),
    };
    // JSON strings are valid YAML scalars: quoting through serde_json escapes whatever the
    // server URL or user name holds.
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skerry\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n{user_block}contexts:\n- name: skerry\n  context:\n    cluster: skerry\n    user: {user}\n    namespace: default\ncurrent-context: skerry\n",
        server = q(server),
        ca = b64(ca_pem),
        user = q(user),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_credential_kinds() {
        let t = render(
            "https://127.0.0.1:6443",
            "CA",
            "admin",
            &Credential::Token("skerry-api.x".into()),
        );
        assert!(t.contains("server: \"https://127.0.0.1:6443\""), "{t}");
        assert!(t.contains("token: skerry-api.x"), "{t}");
        assert!(t.contains("certificate-authority-data: Q0E="), "{t}");
        let c = render(
            "https://h:1",
            "CA",
            "admin",
            &Credential::Certificate {
                cert_pem: "C".into(),
                key_pem: "K".into(),
            },
        );
        assert!(
            c.contains("client-certificate-data: Qw==") && c.contains("client-key-data: Sw=="),
            "{c}"
        );
    }
}
