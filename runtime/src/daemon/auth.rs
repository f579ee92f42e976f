//! Bearer tokens for the TCP listener: the key, the tokens (JWT, HS256 only, claims `ten` and `exp`) and
//! what a token lets a request reach.
//!
//! Pure: it reads the key file once at start and then decides from a request's head alone (method, path,
//! query, `Authorization`), so that a refused request's body is never read. Tokens are checked with the
//! `jsonwebtoken` crate under a validation that admits HS256 alone (so `alg: none`, HS512 and the RSA or EC
//! families are refused) and requires `exp`. The Unix socket never comes here: its file mode decides who
//! connects. Knows nothing of connections or the event loop.

use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::routes::{self, Endpoint};
use super::store;

/// The shortest key accepted: HS256's own output size (RFC 7518 3.2).
pub const MIN_KEY: usize = 32;
/// The longest key file read.
pub const MAX_KEY: usize = 4096;
/// Clock skew allowed on `exp` between the host that made a token and a node that checks it.
pub const LEEWAY_S: u64 = 5;
/// The `ten` claim of a token that reaches everything.
pub const EVERY_TENANT: &str = "*";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what} the token key {path}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("the token key {path} holds {len} bytes: it needs at least {MIN_KEY} (head -c 32 /dev/urandom > {path})")]
    TooShort { path: PathBuf, len: usize },
    #[error("the token key {path} is over {MAX_KEY} bytes: not a key file")]
    TooLong { path: PathBuf },
    #[error("the token key {path} is readable or writable by others (mode {mode:o}): it must be 0600 or 0400")]
    Mode { path: PathBuf, mode: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("tenant {0:?} is neither a tenant name (^[a-z0-9][a-z0-9_-]{{0,62}}$) nor *")]
    Tenant(String),
    #[error("signing the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// The claims of a token. `exp` is a number of seconds since the epoch (a string there fails to decode).
#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    ten: String,
    exp: u64,
}

/// What a request may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Everything: a request on the Unix socket, or a token whose `ten` is `*`.
    Operator,
    /// One tenant's paths and its log events.
    Tenant(String),
}

/// Why a request was refused: 401 `unauthorized` (no token, or one that does not verify) or 403 `forbidden`
/// (a good token for something else).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Unauthorized(String),
    Forbidden(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unauthorized(_) => 401,
            Refusal::Forbidden(_) => 403,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Forbidden(_) => "forbidden",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::Unauthorized(m) | Refusal::Forbidden(m) => m,
        }
    }
}

/// The HMAC key: a file's bytes as they are, at least [`MIN_KEY`] of them.
pub struct TokenKey(Vec<u8>);

impl TokenKey {
    /// None for a key shorter than [`MIN_KEY`].
    pub fn from_bytes(bytes: &[u8]) -> Option<TokenKey> {
        (bytes.len() >= MIN_KEY).then(|| TokenKey(bytes.to_vec()))
    }
}

/// Checks tokens under the key read at start.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// The key file's bytes as they are: at least [`MIN_KEY`], mode 0600 or 0400 (as the secrets key).
pub fn read_key(path: &Path) -> Result<TokenKey, KeyError> {
    let io = |what, source| KeyError::Io { what, path: path.to_path_buf(), source };
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(|e| io("opening", e))?;
    let mode = file.metadata().map_err(|e| io("reading", e))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Mode { path: path.to_path_buf(), mode });
    }
    let mut bytes = Vec::with_capacity(64);
    file.take(MAX_KEY as u64 + 1).read_to_end(&mut bytes).map_err(|e| io("reading", e))?;
    if bytes.len() > MAX_KEY {
        return Err(KeyError::TooLong { path: path.to_path_buf() });
    }
    let len = bytes.len();
    TokenKey::from_bytes(&bytes).ok_or_else(|| KeyError::TooShort { path: path.to_path_buf(), len })
}

/// A token for `tenant` (a tenant name, or `*` for every tenant) that expires `ttl` from now.
pub fn issue(key: &TokenKey, tenant: &str, ttl: Duration) -> Result<String, IssueError> {
    if tenant != EVERY_TENANT && !store::valid_name(tenant) {
        return Err(IssueError::Tenant(tenant.to_string()));
    }
    let exp = now_s().saturating_add(ttl.as_secs());
    let claims = Claims { ten: tenant.to_string(), exp };
    let key = EncodingKey::from_secret(&key.0).expect("a token key is never empty");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(IssueError::Sign)
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Verifier {
    pub fn new(key: &TokenKey) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        validation.leeway = LEEWAY_S;
        Verifier { key: DecodingKey::from_secret(&key.0).expect("a token key is never empty"), validation }
    }

    /// What a token reaches, or why it is refused (always 401: the token itself is the problem).
    pub fn verify(&self, token: &str) -> Result<Access, Refusal> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            Refusal::Unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                ErrorKind::InvalidSignature => "the token's signature does not verify with this node's key".to_string(),
                ErrorKind::InvalidAlgorithm => "the token is not signed with HS256, the only algorithm accepted".to_string(),
                ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
                _ => format!("the token is not a JWT this node accepts: {e}"),
            })
        })?;
        match data.claims.ten.as_str() {
            EVERY_TENANT => Ok(Access::Operator),
            t if store::valid_name(t) => Ok(Access::Tenant(t.to_string())),
            t => Err(Refusal::Unauthorized(format!("the token's ten claim {t:?} is neither a tenant name nor *"))),
        }
    }

    /// What a request on the TCP listener may reach, from its head alone: `GET /v1/health` needs no token;
    /// every other request needs `Authorization: Bearer <token>`, and a tenant's token reaches only paths of
    /// that tenant (and paths that name nothing, which are 404 anyway) and that tenant's log events.
    pub fn authorize(&self, method: &str, path: &str, query: Option<&str>, authorization: Option<&str>) -> Result<Access, Refusal> {
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        let route = routes::route(&segments);
        if method == "GET" && route.as_ref().is_some_and(|r| r.endpoint == Endpoint::Health) {
            return Ok(Access::Operator);
        }
        let token = bearer(authorization)?;
        let access = self.verify(token)?;
        let Access::Tenant(own) = &access else { return Ok(access) };
        let Some(route) = route else { return Ok(access) };
        let forbidden = |what: &str| Refusal::Forbidden(format!("this token is for tenant {own} only: {what} needs another"));
        match route.endpoint {
            Endpoint::Metrics => return Err(forbidden("/metrics covers every tenant and")),
            Endpoint::Logs => {
                for pair in query.unwrap_or("").split('&') {
                    if let Some(("tenant", t)) = pair.split_once('=') {
                        if t != own {
                            return Err(forbidden(&format!("the log events of tenant {t}")));
                        }
                    }
                }
            }
            _ => {}
        }
        match route.tenant {
            Some(t) if t != own => Err(forbidden(&format!("tenant {t}'s paths"))),
            _ => Ok(access),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(authorization: Option<&str>) -> Result<&str, Refusal> {
    let header = authorization.ok_or_else(|| Refusal::Unauthorized("this listener needs Authorization: Bearer <token>".into()))?;
    let (scheme, token) = header.trim().split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Refusal::Unauthorized("the Authorization header must be Bearer <token>".into()));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn key(bytes: &[u8]) -> TokenKey {
        TokenKey::from_bytes(bytes).unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::new(&key(KEY))
    }

    fn token(tenant: &str) -> String {
        issue(&key(KEY), tenant, Duration::from_secs(60)).unwrap()
    }

    /// A token with these header and claims, signed with HS256 under `key` whatever the header says.
    fn forged(header: &str, claims: &str, key: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!("{}.{}", b64.encode(header), b64.encode(claims));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &EncodingKey::from_secret(key).unwrap(), Algorithm::HS256).unwrap();
        format!("{input}.{sig}")
    }

    fn auth(method: &str, target: &str, token: Option<&str>) -> Result<Access, Refusal> {
        let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
        let header = token.map(|t| format!("Bearer {t}"));
        verifier().authorize(method, path, query, header.as_deref())
    }

    #[test]
    fn issued_tokens_verify() {
        assert_eq!(verifier().verify(&token("acme")), Ok(Access::Tenant("acme".into())));
        assert_eq!(verifier().verify(&token("*")), Ok(Access::Operator));
        assert!(TokenKey::from_bytes(&KEY[..31]).is_none());
        assert!(matches!(issue(&key(KEY), "ACME", Duration::from_secs(1)), Err(IssueError::Tenant(_))));
    }

    #[test]
    fn bad_tokens_are_401() {
        let v = verifier();
        let unauthorized = |t: &str| matches!(v.verify(t), Err(Refusal::Unauthorized(_)));
        let exp = now_s() + 60;
        assert!(unauthorized(&issue(&key(b"another key, also 32 bytes long!"), "acme", Duration::from_secs(60)).unwrap()));
        assert!(unauthorized(&forged(r#"{"alg":"HS256","typ":"JWT"}"#, &format!(r#"{{"ten":"acme","exp":{}}}"#, now_s() - 60), KEY)));
        assert!(unauthorized(&forged(r#"{"alg":"HS256"}"#, r#"{"ten":"acme"}"#, KEY)));
        assert!(unauthorized(&forged(r#"{"alg":"HS256"}"#, r#"{"ten":"acme","exp":"never"}"#, KEY)));
        assert!(unauthorized(&forged(r#"{"alg":"HS256"}"#, &format!(r#"{{"exp":{exp}}}"#), KEY)));
        assert!(unauthorized(&forged(r#"{"alg":"HS256"}"#, &format!(r#"{{"ten":"../x","exp":{exp}}}"#), KEY)));
        let hs512 = Claims { ten: "acme".into(), exp };
        assert!(unauthorized(
            &jsonwebtoken::encode(&Header::new(Algorithm::HS512), &hs512, &EncodingKey::from_secret(KEY).unwrap()).unwrap()
        ));
        assert!(unauthorized(&forged(r#"{"alg":"none"}"#, &format!(r#"{{"ten":"acme","exp":{exp}}}"#), KEY)));
        let good = token("acme");
        let unsigned = format!("{}.", good.rsplit_once('.').unwrap().0);
        assert!(unauthorized(&unsigned));
        assert!(unauthorized("not.a.jwt"));
        assert!(unauthorized(""));
    }

    #[test]
    fn a_tenant_token_reaches_its_tenant_only() {
        let acme = token("acme");
        let t = Some(acme.as_str());
        assert_eq!(auth("POST", "/v1/tenants/acme/run", t), Ok(Access::Tenant("acme".into())));
        assert_eq!(auth("PUT", "/v1/tenants/acme/tasks/x", t), Ok(Access::Tenant("acme".into())));
        assert_eq!(auth("GET", "/v1/logs", t), Ok(Access::Tenant("acme".into())));
        assert_eq!(auth("GET", "/v1/logs?tenant=acme", t), Ok(Access::Tenant("acme".into())));
        assert_eq!(auth("GET", "/nowhere", t), Ok(Access::Tenant("acme".into())));
        for (method, target) in [
            ("POST", "/v1/tenants/other/run"),
            ("GET", "/v1/tenants/acm%65/tasks"),
            ("GET", "/v1/tenants/ACME/tasks"),
            ("PUT", "/v1/tenants/other/secrets/K"),
            ("GET", "/v1/logs?tenant=other"),
            ("GET", "/v1/logs?tenant=acme&tenant=other"),
            ("GET", "/metrics"),
        ] {
            let got = auth(method, target, t);
            assert!(matches!(got, Err(Refusal::Forbidden(_))), "{method} {target}: {got:?}");
        }
        let star = token("*");
        assert_eq!(auth("GET", "/metrics", Some(&star)), Ok(Access::Operator));
        assert_eq!(auth("POST", "/v1/tenants/other/run", Some(&star)), Ok(Access::Operator));
    }

    #[test]
    fn only_health_goes_without_a_token() {
        assert_eq!(auth("GET", "/v1/health", None), Ok(Access::Operator));
        assert!(matches!(auth("POST", "/v1/health", None), Err(Refusal::Unauthorized(_))));
        assert!(matches!(auth("GET", "/v1/logs", None), Err(Refusal::Unauthorized(_))));
        assert!(matches!(auth("GET", "/nowhere", None), Err(Refusal::Unauthorized(_))));
        let v = verifier();
        let t = token("acme");
        for header in [t.clone(), format!("Basic {t}"), "Bearer".into(), "Bearer  ".into()] {
            assert!(matches!(v.authorize("GET", "/v1/logs", None, Some(&header)), Err(Refusal::Unauthorized(_))), "{header}");
        }
        assert!(v.authorize("GET", "/v1/logs", None, Some(&format!("bearer {t}"))).is_ok());
    }

    #[test]
    fn key_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("taskcell-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let write = |bytes: &[u8], mode: u32| {
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(KEY, 0o600);
        assert_eq!(read_key(&path).unwrap().0, KEY);
        write(&KEY[..31], 0o600);
        assert!(matches!(read_key(&path), Err(KeyError::TooShort { len: 31, .. })));
        write(KEY, 0o644);
        assert!(matches!(read_key(&path), Err(KeyError::Mode { mode: 0o644, .. })));
        write(&[7u8; MAX_KEY + 1], 0o400);
        assert!(matches!(read_key(&path), Err(KeyError::TooLong { .. })));
        assert!(matches!(read_key(&dir.join("none")), Err(KeyError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
