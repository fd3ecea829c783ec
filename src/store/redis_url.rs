//! Reading a Redis store URL: one server (`redis://`, `rediss://`), a
//! cluster (`redis+cluster://`, `rediss+cluster://`) or a deployment watched
//! by Sentinel (`redis+sentinel://`, `rediss+sentinel://`), with the options
//! every one of them takes:
//!
//! | option | meaning |
//! |---|---|
//! | `prefix=NAME` | the key namespace (default `latchkey`) |
//! | `wait_replicas=N`, `wait_timeout=D` | a write counts once N replicas have it ([`Durability`]) |
//! | `ca_file=PATH` | TLS: trust only the CA certificates in this PEM file (default: the bundled web roots) |
//! | `client_cert=PATH`, `client_key=PATH` | TLS: present this certificate (PEM) and key, for servers that require clients' certificates |
//!
//! Anything else is refused with a message naming it, and so is a TLS
//! option on a plaintext URL and the redis crate's `#insecure` (latchkey
//! never talks to its session store over TLS it has not verified).

use std::path::Path;
use std::time::Duration;

use super::redis::{Durability, Options, SentinelTarget, Target};
use super::{StoreError, StoreResult, namespace, redact_url, split_prefix};

/// A Redis store URL, read.
#[derive(Debug)]
pub(crate) struct RedisUrl {
    /// Where to connect.
    pub target: Target,
    /// The key namespace, ending in `:`.
    pub prefix: String,
    /// How: durability and TLS.
    pub options: Options,
}

/// Whether `url` names a Redis store (of any topology).
pub(crate) fn is_redis(url: &str) -> bool {
    ["redis", "rediss"].iter().any(|scheme| {
        url.strip_prefix(scheme).is_some_and(|rest| {
            rest.starts_with("://")
                || rest.starts_with("+cluster://")
                || rest.starts_with("+sentinel://")
        })
    })
}

/// Reads a Redis store URL; `Err` names what is wrong, with the URL's
/// secrets redacted.
pub(crate) fn parse(url: &str) -> StoreResult<RedisUrl> {
    if url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://") {
        let (target, prefix, options) = sentinel_target(url)?;
        return Ok(RedisUrl {
            target: Target::Sentinel(target),
            prefix,
            options,
        });
    }
    if url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://") {
        let (nodes, prefix, options) = cluster_nodes(url)?;
        return Ok(RedisUrl {
            target: Target::Cluster(nodes),
            prefix,
            options,
        });
    }
    let (url, options) = take_options(url)?;
    let (url, prefix) = split_prefix(&url)?;
    Ok(RedisUrl {
        target: Target::Server(url),
        prefix,
        options,
    })
}

/// The options latchkey reads from a Redis URL's query, as written.
#[derive(Default)]
struct OptionText {
    wait_replicas: Option<String>,
    wait_timeout: Option<String>,
    ca_file: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
}

impl OptionText {
    /// Whether `key` is one of these options.
    fn knows(key: &str) -> bool {
        Self::default().take(key, "")
    }

    /// Takes `key=value` if it is one of these options and not given before.
    fn take(&mut self, key: &str, value: &str) -> bool {
        let slot = match key {
            "wait_replicas" => &mut self.wait_replicas,
            "wait_timeout" => &mut self.wait_timeout,
            "ca_file" => &mut self.ca_file,
            "client_cert" => &mut self.client_cert,
            "client_key" => &mut self.client_key,
            _ => return false,
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(value.to_owned());
        true
    }

    /// What they ask for, on a URL that does (`tls`) or does not use TLS;
    /// `Err` says what is wrong. Reads the certificate files.
    fn options(self, tls: bool) -> Result<Options, String> {
        let durability = durability(self.wait_replicas, self.wait_timeout)?;
        let tls = certificates(tls, self.ca_file, self.client_cert, self.client_key)?;
        Ok(Options {
            durability,
            tls,
            ..Options::default()
        })
    }
}

/// `wait_replicas` and `wait_timeout`, checked.
fn durability(
    replicas: Option<String>,
    timeout: Option<String>,
) -> Result<Option<Durability>, String> {
    let Some(replicas) = replicas else {
        return match timeout {
            Some(_) => Err("wait_timeout without wait_replicas".into()),
            None => Ok(None),
        };
    };
    let replicas = (replicas.parse::<u32>().ok())
        .filter(|n| (1..=16).contains(n))
        .ok_or_else(|| {
            format!("wait_replicas={replicas:?} is not a number of replicas from 1 to 16")
        })?;
    let max = Durability::MAX_TIMEOUT;
    let timeout = match timeout {
        None => Durability::DEFAULT_TIMEOUT,
        Some(text) => humantime::parse_duration(&text)
            .ok()
            .filter(|t: &Duration| !t.is_zero() && *t <= max)
            .ok_or_else(|| {
                format!(
                    "wait_timeout={text:?} is not a duration from 1ms to {}ms",
                    max.as_millis()
                )
            })?,
    };
    Ok(Some(Durability { replicas, timeout }))
}

/// `ca_file`, `client_cert` and `client_key`, read and checked: PEM files
/// that hold what they should, a certificate and the key that goes with it,
/// and only on a TLS URL.
fn certificates(
    tls: bool,
    ca_file: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
) -> Result<Option<::redis::TlsCertificates>, String> {
    if ca_file.is_none() && client_cert.is_none() && client_key.is_none() {
        return Ok(None);
    }
    if !tls {
        return Err(
            "ca_file, client_cert and client_key are TLS options: use the rediss scheme (rediss://, rediss+cluster://, rediss+sentinel://)"
                .into(),
        );
    }
    let read = |option: &str, path: &str| {
        std::fs::read(path).map_err(|e| format!("{option} {path:?}: {e}"))
    };
    let root_cert = match ca_file {
        None => None,
        Some(path) => {
            crate::tls::certificates(Path::new(&path)).map_err(|e| format!("ca_file: {e}"))?;
            Some(read("ca_file", &path)?)
        }
    };
    let client_tls = match (client_cert, client_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            crate::tls::client_config(&[], Some((Path::new(&cert), Path::new(&key))))
                .map_err(|e| format!("client_cert and client_key: {e}"))?;
            Some(::redis::ClientTlsConfig {
                client_cert: read("client_cert", &cert)?,
                client_key: read("client_key", &key)?,
            })
        }
        _ => return Err("client_cert and client_key go together: give both or neither".into()),
    };
    Ok(Some(::redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// The error for a `#fragment`: the redis crate reads `#insecure` as "do
/// not verify the server's certificate", which latchkey never does.
const NO_FRAGMENT: &str = "a #fragment is not an option (latchkey always verifies a Redis server's certificate: give a private CA with ca_file=PATH)";

/// `url` without the options latchkey reads (for the redis crate, which
/// reads the rest), and those options (`redis://` and `rediss://`).
fn take_options(url: &str) -> StoreResult<(String, Options)> {
    let wrong =
        |problem: String| StoreError::Config(format!("store URL {}: {problem}", redact_url(url)));
    let mut parsed = ::url::Url::parse(url).map_err(|e| wrong(e.to_string()))?;
    if parsed.fragment().is_some() {
        return Err(wrong(NO_FRAGMENT.into()));
    }
    let mut text = OptionText::default();
    let mut kept = Vec::new();
    for (key, value) in parsed.query_pairs() {
        if !text.take(&key, &value) {
            if OptionText::knows(&key) {
                return Err(wrong(format!("{key} is given twice")));
            }
            kept.push((key.into_owned(), value.into_owned()));
        }
    }
    let options = text.options(parsed.scheme() == "rediss").map_err(wrong)?;
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), options))
}

/// The parts of `SCHEME://[CREDENTIALS@]HOSTS[/PATH][?QUERY]`: a URL with
/// several hosts, which `url::Url` does not read.
struct Parts<'a> {
    tls: bool,
    credentials: Option<&'a str>,
    hosts: &'a str,
    path: &'a str,
    query: &'a str,
}

/// Splits a cluster or Sentinel URL; `Err` says what is wrong.
fn parts<'a>(url: &'a str, kind: &str) -> Result<Parts<'a>, String> {
    let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
    let tls = match scheme.strip_suffix(kind) {
        Some("redis") => false,
        Some("rediss") => true,
        _ => return Err(format!("not redis{kind}:// or rediss{kind}://")),
    };
    if rest.contains('#') {
        return Err(NO_FRAGMENT.into());
    }
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (Some(credentials), hosts),
        None => (None, authority),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    Ok(Parts {
        tls,
        credentials,
        hosts,
        path,
        query,
    })
}

/// `redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/[?prefix=…]`
/// (`rediss+cluster://` for TLS): one `redis://` URL per seed node, with the
/// credentials on each, the key prefix and the options. A cluster has no
/// databases, so a path is refused, as is any option not in the table above.
fn cluster_nodes(url: &str) -> StoreResult<(Vec<String>, String, Options)> {
    let wrong = |problem: &str| {
        StoreError::Config(format!(
            "store URL {}: {problem} (write redis+cluster://HOST:PORT,HOST:PORT/?prefix=NAME)",
            redact_url(url)
        ))
    };
    let parts = parts(url, "+cluster").map_err(|problem| wrong(&problem))?;
    if !parts.path.is_empty() && parts.path != "/" {
        return Err(wrong("a cluster has no databases, so no path"));
    }
    let mut prefix = None;
    let mut text = OptionText::default();
    for (key, value) in ::url::form_urlencoded::parse(parts.query.as_bytes()) {
        match &*key {
            "prefix" if prefix.is_none() => prefix = Some(value.into_owned()),
            _ if text.take(&key, &value) => {}
            _ => return Err(wrong(&format!("unknown or repeated option {key:?}"))),
        }
    }
    let options = text.options(parts.tls).map_err(|problem| wrong(&problem))?;
    let node_scheme = if parts.tls { "rediss" } else { "redis" };
    let nodes = (parts.hosts.split(','))
        .map(|host| {
            let node = match parts.credentials {
                Some(credentials) => format!("{node_scheme}://{credentials}@{host}"),
                None => format!("{node_scheme}://{host}"),
            };
            match ::url::Url::parse(&node) {
                Ok(parsed)
                    if parsed.host_str().is_some_and(|h| !h.is_empty())
                        && parsed.port().is_some()
                        && parsed.path().is_empty() =>
                {
                    Ok(node)
                }
                _ => Err(wrong(&format!("{host:?} is not HOST:PORT"))),
            }
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok((nodes, namespace(prefix), options))
}

/// `redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER_NAME[/DB][?prefix=…&sentinel_password=…]`
/// (`rediss+sentinel://`: TLS to the sentinels and to the master): the
/// sentinels, the name they watch the master under, its database (default
/// 0: the number is honoured, unlike some other proxies), the master's
/// credentials (in the URL's user part), the sentinels' own password and
/// the options.
fn sentinel_target(url: &str) -> StoreResult<(SentinelTarget, String, Options)> {
    let wrong = |problem: &str| {
        StoreError::Config(format!(
            "store URL {}: {problem} (write redis+sentinel://HOST:PORT,HOST:PORT/MASTER_NAME/DB)",
            redact_url(url)
        ))
    };
    let parts = parts(url, "+sentinel").map_err(|problem| wrong(&problem))?;
    let decode = |text: &str| {
        ::percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map(|t| t.into_owned())
            .map_err(|_| wrong("the user or password is not UTF-8"))
    };
    let (username, password) = match parts.credentials {
        None => (None, None),
        Some(credentials) => {
            let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
            let user = Some(decode(user)?).filter(|u| !u.is_empty());
            let password = Some(decode(password)?).filter(|p| !p.is_empty());
            (user, password)
        }
    };
    let sentinels = (parts.hosts.split(','))
        .map(|host| {
            let (name, port) = host
                .rsplit_once(':')
                .ok_or_else(|| wrong(&format!("{host:?} is not HOST:PORT")))?;
            let port = port.parse::<u16>().ok().filter(|p| *p > 0);
            match port {
                Some(port) if !name.is_empty() => Ok((name.to_owned(), port)),
                _ => Err(wrong(&format!("{host:?} is not HOST:PORT"))),
            }
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let mut path = parts.path.trim_start_matches('/').split('/');
    let master_name = path
        .next()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| wrong("no master name"))?;
    let db = match path.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse::<i64>()
            .ok()
            .filter(|db| *db >= 0)
            .ok_or_else(|| wrong(&format!("{db:?} is not a database number")))?,
    };
    if path.next().is_some_and(|extra| !extra.is_empty()) {
        return Err(wrong("more after the database number"));
    }
    let (mut prefix, mut sentinel_password) = (None, None);
    let mut text = OptionText::default();
    for (key, value) in ::url::form_urlencoded::parse(parts.query.as_bytes()) {
        match &*key {
            _ if text.take(&key, &value) => {}
            "prefix" if prefix.is_none() => prefix = Some(value.into_owned()),
            "sentinel_password" if sentinel_password.is_none() => {
                sentinel_password = Some(value.into_owned())
            }
            _ => return Err(wrong(&format!("unknown or repeated option {key:?}"))),
        }
    }
    let options = text.options(parts.tls).map_err(|problem| wrong(&problem))?;
    let target = SentinelTarget {
        sentinels,
        master_name: decode(master_name)?,
        db,
        username,
        password,
        sentinel_password,
        tls: parts.tls,
    };
    Ok((target, namespace(prefix), options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redact_url;

    #[test]
    fn every_redis_scheme_and_nothing_else_is_redis() {
        for url in [
            "redis://h",
            "rediss://h",
            "redis+cluster://h:1",
            "rediss+cluster://h:1",
            "redis+sentinel://h:1/m",
            "rediss+sentinel://h:1/m",
        ] {
            assert!(is_redis(url), "{url}");
        }
        for url in ["redisx://h", "redis+other://h", "postgres://h", "redis:/h"] {
            assert!(!is_redis(url), "{url}");
        }
    }

    #[test]
    fn wait_replicas_is_read_from_every_redis_url_and_checked() {
        let two = Some(Durability {
            replicas: 2,
            timeout: Duration::from_millis(250),
        });
        let (url, options) =
            take_options("redis://:pw@h:6379/0?wait_replicas=2&prefix=p&wait_timeout=250ms")
                .unwrap();
        assert_eq!(
            (url.as_str(), options.durability),
            ("redis://:pw@h:6379/0?prefix=p", two)
        );
        let (_, _, options) = cluster_nodes("redis+cluster://h:1/?wait_replicas=1").unwrap();
        assert_eq!(
            options.durability.unwrap().timeout,
            Durability::DEFAULT_TIMEOUT
        );
        let (_, _, options) =
            sentinel_target("redis+sentinel://h:1/m/0?wait_timeout=250ms&wait_replicas=2").unwrap();
        assert_eq!(options.durability, two);
        for bad in [
            "redis://:pw@h/0?wait_replicas=0",
            "redis://:pw@h/0?wait_replicas=many",
            "redis://:pw@h/0?wait_replicas=1&wait_timeout=5s",
            "redis://:pw@h/0?wait_replicas=1&wait_timeout=0s",
            "redis://:pw@h/0?wait_timeout=1s",
            "redis://:pw@h/0?wait_replicas=1&wait_replicas=2",
        ] {
            let error = take_options(bad).unwrap_err().to_string();
            assert!(!error.contains("pw"), "{error}");
            assert!(error.contains("wait_"), "{bad}: {error}");
        }
        let error = cluster_nodes("redis+cluster://h:1/?wait_replicas=1&wait_replicas=1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("repeated"), "{error}");
    }

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_its_database() {
        let (target, prefix, _) = sentinel_target(
            "redis+sentinel://app:p%40ss@10.0.0.1:26379,10.0.0.2:26380/mymaster/3?prefix=x&sentinel_password=sp",
        )
        .unwrap();
        assert_eq!(
            target.sentinels,
            [
                ("10.0.0.1".to_owned(), 26379),
                ("10.0.0.2".to_owned(), 26380)
            ]
        );
        assert_eq!(target.master_name, "mymaster");
        assert_eq!(target.db, 3, "the database is honoured");
        assert_eq!(target.username.as_deref(), Some("app"));
        assert_eq!(target.password.as_deref(), Some("p@ss"));
        assert_eq!(target.sentinel_password.as_deref(), Some("sp"));
        assert!(!target.tls);
        assert_eq!(prefix, "x:");
        assert!(
            !format!("{target:?}").contains("p@ss"),
            "Debug hides passwords"
        );
        let (plain, _, _) = sentinel_target("redis+sentinel://h:26379/m").unwrap();
        assert_eq!((plain.db, plain.password), (0, None));
        let (tls, _, _) = sentinel_target("rediss+sentinel://h:26379/m").unwrap();
        assert!(tls.tls);
        for bad in [
            "redis+sentinel://:pw@h:26379/",
            "redis+sentinel://:pw@h:26379/m/-1",
            "redis+sentinel://:pw@h:26379/m/x",
            "redis+sentinel://:pw@h:26379/m/0/more",
            "redis+sentinel://:pw@h/m/0",
            "redis+sentinel://:pw@h:26379/m/0?db=2",
            "redis+sentinel://:pw@h:26379/m/0?sentinel_password=a&sentinel_password=b",
            "redis+sentinel://:pw@h:26379/m/0#insecure",
        ] {
            let error = sentinel_target(bad).unwrap_err().to_string();
            assert!(!error.contains("pw"), "{error}");
            assert!(
                error.contains("redis+sentinel://HOST:PORT"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn a_cluster_url_names_its_seed_nodes_and_nothing_else() {
        let (nodes, prefix, options) =
            cluster_nodes("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/?prefix=app").unwrap();
        assert_eq!(nodes, ["redis://10.0.0.1:7000", "redis://10.0.0.2:7001"]);
        assert_eq!(prefix, "app:");
        assert!(options.durability.is_none() && options.tls.is_none());
        let (nodes, prefix, _) = cluster_nodes("rediss+cluster://:s3cret@h:6380").unwrap();
        assert_eq!(nodes, ["rediss://:s3cret@h:6380"]);
        assert_eq!(prefix, "latchkey:");
        for bad in [
            "redis+cluster://h:7000/0",
            "redis+cluster://h:7000,/",
            "redis+cluster://h/",
            "redis+cluster://:pw@h:7000/?prefix=a&prefix=b",
            "redis+cluster://:pw@h:7000/?db=1",
            "redis+cluster://:pw@h:70000/",
            "redis+cluster://:pw@h:7000/#insecure",
            "redis+cluster://:pw@h:7000/?prefix=a#insecure",
        ] {
            let error = cluster_nodes(bad).unwrap_err().to_string();
            assert!(!error.contains("pw"), "{error}");
            assert!(
                error.contains("redis+cluster://HOST:PORT"),
                "{bad}: {error}"
            );
        }
        assert!(!redact_url("redis+cluster://u:pw@h:1,h:2/").contains("pw"));
    }

    /// A test CA certificate and a client certificate with its key, made
    /// here (PEM files in a temporary folder).
    fn pem_files() -> (tempfile::TempDir, String, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let ca = write("ca.pem", &cert.pem());
        let cert_file = write("client.pem", &cert.pem());
        let key_file = write("client.key", &key.serialize_pem());
        (dir, ca, cert_file, key_file)
    }

    #[test]
    fn tls_options_are_read_on_every_tls_scheme() {
        let (_dir, ca, cert, key) = pem_files();
        let query = format!("ca_file={ca}&client_cert={cert}&client_key={key}");
        for url in [
            format!("rediss://h:6380/0?{query}&prefix=p"),
            format!("rediss+cluster://h:1,h:2/?{query}"),
            format!("rediss+sentinel://h:1/m/0?{query}"),
        ] {
            let read = parse(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
            let tls = read.options.tls.expect("the certificates");
            assert!(tls.root_cert.is_some() && tls.client_tls.is_some(), "{url}");
            if let Target::Server(driver_url) = &read.target {
                assert_eq!(
                    driver_url, "rediss://h:6380/0",
                    "options left for the driver"
                );
                assert_eq!(read.prefix, "p:");
            }
        }
        let only_ca = parse(&format!("rediss://h/0?ca_file={ca}")).unwrap();
        assert!(only_ca.options.tls.unwrap().client_tls.is_none());
        assert!(parse("rediss://h/0").unwrap().options.tls.is_none());
    }

    /// What an operator might get wrong, or an attacker who can set the
    /// store URL might try: each is refused at startup, by name.
    #[test]
    fn tls_options_that_cannot_hold_are_refused_by_name() {
        let (dir, ca, cert, key) = pem_files();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let not_pem = not_pem.to_str().unwrap();
        let other_key = {
            let path = dir.path().join("other.key");
            std::fs::write(&path, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
            path.to_str().unwrap().to_owned()
        };
        for (url, expected) in [
            // Plaintext with a CA: the operator believes it is TLS.
            (format!("redis://:pw@h/0?ca_file={ca}"), "rediss"),
            (format!("redis+cluster://:pw@h:1/?ca_file={ca}"), "rediss"),
            (
                format!("redis+sentinel://:pw@h:1/m?client_cert={cert}&client_key={key}"),
                "rediss",
            ),
            // The redis crate's way to skip certificate checks.
            ("rediss://:pw@h/0#insecure".into(), "verifies"),
            ("rediss://:pw@h/0?prefix=p#insecure".into(), "verifies"),
            (
                "rediss://:pw@h/0?ca_file=/nonexistent/ca.pem".into(),
                "/nonexistent/ca.pem",
            ),
            (
                format!("rediss://:pw@h/0?ca_file={not_pem}"),
                "no certificate",
            ),
            (
                format!("rediss://:pw@h/0?client_cert={cert}"),
                "go together",
            ),
            (format!("rediss://:pw@h/0?client_key={key}"), "go together"),
            (
                format!("rediss://:pw@h/0?client_cert={cert}&client_key={other_key}"),
                "client_key",
            ),
            (
                format!("rediss://:pw@h/0?ca_file={ca}&ca_file={ca}"),
                "twice",
            ),
            (
                format!("rediss+cluster://:pw@h:1/?ca_file={ca}&ca_file={ca}"),
                "repeated",
            ),
        ] {
            let error = parse(&url).unwrap_err().to_string();
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("pw@"), "{error}");
        }
    }
}
