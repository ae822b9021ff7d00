//! Broker URIs: the shape checks that catch a wrong `RABBIT_MQ_URI` early, and redaction of
//! passwords for logs and errors. The transport parses a URI in full when it connects.

/// The URI scheme of the in-memory transport: `memory://shop` names an in-memory broker that
/// every client and microservice of the process using the same name shares.
pub(crate) const MEMORY_SCHEME: &str = "memory://";

/// The URIs of a comma-separated list, in order, blanks skipped.
pub(crate) fn split(uris: &str) -> impl Iterator<Item = &str> {
    uris.split(',').map(str::trim).filter(|uri| !uri.is_empty())
}

/// Checks one URI or a comma-separated list: `amqp://` or `amqps://` with a numeric port if one
/// is given, or `memory://name`.
pub(crate) fn check(uris: &str) -> Result<(), String> {
    let mut any = false;
    for uri in split(uris) {
        any = true;
        if let Some(name) = uri.strip_prefix(MEMORY_SCHEME) {
            if name.is_empty() {
                return Err("memory:// needs a broker name, as memory://shop".to_owned());
            }
            continue;
        }
        let Some(rest) = uri
            .strip_prefix("amqp://")
            .or_else(|| uri.strip_prefix("amqps://"))
        else {
            return Err(
                "expected amqp://user:password@host:port/vhost, amqps://… or memory://name"
                    .to_owned(),
            );
        };
        check_authority(authority(rest))?;
    }
    if any {
        Ok(())
    } else {
        Err("no URI given".to_owned())
    }
}

/// The `user:password@host:port` part of what follows the scheme.
fn authority(rest: &str) -> &str {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

fn check_authority(authority: &str) -> Result<(), String> {
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    // `[::1]:5672`: the port follows the bracket.
    let port = match host_port.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((_, after)) => after.strip_prefix(':'),
            None => return Err("an IPv6 host needs its closing ']'".to_owned()),
        },
        None => host_port.split_once(':').map(|(_, port)| port),
    };
    match port {
        Some(port) if port.parse::<u16>().is_err() => {
            Err(format!("port {port:?} is not a number from 0 to 65535"))
        }
        _ => Ok(()),
    }
}

/// Replaces the passwords of a URI (or a comma-separated list) with `***`, so it can be logged.
pub(crate) fn redact(uris: &str) -> String {
    uris.split(',')
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end + 3..];
    let authority = authority(rest);
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!(
                "{}{}:***{}",
                &uri[..scheme_end + 3],
                &authority[..colon],
                &rest[at..]
            )
        }
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_checked_for_their_shape() {
        for good in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqps://rabbit.internal",
            "amqp://u:p@[::1]:5672/vh?heartbeat=10",
            "amqp://a:1@n1/%2f, amqp://a:2@n2:5673/%2f",
            "memory://shop",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for bad in [
            "http://x",
            "amqp://host:port/%2f",
            "amqp://host:99999",
            "amqp://[::1:5672",
            "memory://",
            " , ",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(redact("amqps://h:5671"), "amqps://h:5671");
        assert_eq!(
            redact("amqp://a:pw1@n1/%2f,amqp://a:p@w2@n2/%2f"),
            "amqp://a:***@n1/%2f,amqp://a:***@n2/%2f"
        );
    }
}
