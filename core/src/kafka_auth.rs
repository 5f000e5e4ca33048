//! librdkafka settings for a Kafka side's `auth`, shared by the workers (which get the Secret
//! values as environment) and the operator (which reads the Secrets for its own metadata and
//! lag clients), so that both connect the same way.

use k8s_openapi::api::core::v1::SecretKeySelector;
use sluice_crds::v1alpha1::KafkaAuth;

/// One credential `auth` needs: its environment suffix (`SASL_USERNAME`, `SASL_PASSWORD`,
/// `TLS_CA`, `TLS_CERTIFICATE`, `TLS_KEY`), the spec field naming it (e.g.
/// `spec.source.kafka.auth.sasl.password`) and the Secret key it is in.
pub struct Needed<'a> {
    /// Suffix of the worker's environment variable `SLUICE_<SIDE>_<suffix>`.
    pub suffix: &'static str,
    /// The field of the spec that names the Secret key.
    pub field: String,
    /// The Secret key.
    pub secret: &'a SecretKeySelector,
}

/// The librdkafka properties for `auth` at spec path `at` (`spec.source.kafka.auth`), each
/// credential given by `value` (an error from it is returned as is).
pub fn properties<E>(
    auth: Option<&KafkaAuth>,
    at: &str,
    mut value: impl FnMut(Needed<'_>) -> Result<String, E>,
) -> Result<Vec<(&'static str, String)>, E> {
    let Some(auth) = auth else {
        return Ok(Vec::new());
    };
    let protocol = match (&auth.sasl, &auth.tls) {
        (Some(_), Some(_)) => "SASL_SSL",
        (Some(_), None) => "SASL_PLAINTEXT",
        (None, Some(_)) => "SSL",
        (None, None) => "PLAINTEXT",
    };
    let mut out = vec![("security.protocol", protocol.to_string())];
    let mut need = |suffix, field: String, secret| {
        value(Needed {
            suffix,
            field,
            secret,
        })
    };
    if let Some(sasl) = &auth.sasl {
        let mechanism = serde_json::to_value(sasl.mechanism)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        out.push(("sasl.mechanism", mechanism));
        out.push((
            "sasl.username",
            need(
                "SASL_USERNAME",
                format!("{at}.sasl.username"),
                &sasl.username,
            )?,
        ));
        out.push((
            "sasl.password",
            need(
                "SASL_PASSWORD",
                format!("{at}.sasl.password"),
                &sasl.password,
            )?,
        ));
    }
    if let Some(tls) = &auth.tls {
        for (secret, suffix, key, field) in [
            (&tls.ca, "TLS_CA", "ssl.ca.pem", "tls.ca"),
            (
                &tls.certificate,
                "TLS_CERTIFICATE",
                "ssl.certificate.pem",
                "tls.certificate",
            ),
            (&tls.key, "TLS_KEY", "ssl.key.pem", "tls.key"),
        ] {
            if let Some(secret) = secret {
                out.push((key, need(suffix, format!("{at}.{field}"), secret)?));
            }
        }
    }
    Ok(out)
}
