//! Client-side credentials: a tonic interceptor that adds `authorization:
//! Bearer TOKEN` to every call, and where clients find their token.

use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};

/// Adds the bearer token (when there is one) to every request.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// A token as read from a file or the environment (surrounding whitespace is ignored).
    pub fn new(token: Option<&str>) -> Result<Bearer, String> {
        match token.map(str::trim).filter(|token| !token.is_empty()) {
            None => Ok(Bearer(None)),
            Some(token) => format!("Bearer {token}")
                .parse()
                .map(|value| Bearer(Some(value)))
                .map_err(|_| "the token holds characters an HTTP header cannot carry".to_owned()),
        }
    }

    /// Reads the token from a file, naming the file when it cannot.
    pub fn from_file(path: &Path) -> Result<Bearer, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read the token file {}: {error}", path.display()))?;
        Bearer::new(Some(&text)).map_err(|problem| format!("{}: {problem}", path.display()))
    }

    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Where a single-machine broker writes its first admin token, and where
/// allotctl looks for one by default: `$XDG_CONFIG_HOME/allot/admin.token`, else
/// `~/.config/allot/admin.token`.
pub fn default_admin_token_file() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(config.join("allot").join("admin.token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_become_headers_and_bad_ones_are_refused() {
        assert!(!Bearer::new(None).expect("none").is_some());
        assert!(!Bearer::new(Some("  \n")).expect("blank").is_some());
        assert!(Bearer::new(Some("allot_abc\n")).expect("token").is_some());
        assert!(Bearer::new(Some("a\u{7f}b")).is_err());
        let error = Bearer::from_file(Path::new("/nonexistent/token")).expect_err("missing");
        assert!(error.contains("/nonexistent/token"), "{error}");
    }
}
