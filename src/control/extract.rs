//! The edge: request bodies, queries and path parameters become typed values here, or a precise
//! 4xx. Every error the API sends is an [`ApiError`], so every error body has one shape:
//! `{"error": {"code": "snake_case", "message": "..."}}`.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

use super::Limits;
use crate::app::{AppError, ErrorKind};

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: Cow::Borrowed(code),
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {} KiB", limit / 1024),
        )
    }

    /// The JSON body, also used by the server for answers outside the router (503, 403).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> ApiError {
        let status = match e.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Internal => {
                // The daemon failed, not the request: worth a line in the journal.
                tracing::error!(code = e.code, error = %e.message, "control request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError {
            status,
            code: Cow::Borrowed(e.code),
            message: e.message,
        }
    }
}

/// A JSON request body, parsed strictly: `application/json` only, at most
/// [`Limits::max_body_bytes`], read within [`Limits::body_read_timeout`], and every serde error
/// (syntax, wrong type, unknown or missing field) a 400 that names the field. With `PATCH`
/// ([`StrictPatch`]) a member whose value is `null` is refused too ([`parse_patch`]).
#[derive(Debug)]
pub struct StrictJson<T, const PATCH: bool = false>(pub T);

/// A JSON body for a PATCH: like [`StrictJson`], and a member whose value is `null` is refused
/// too. serde reads `null` as "absent" for an `Option` field, but a client sending
/// `"data_types": null` means something (clear it? reset it?) that the API does not do;
/// leaving the field out is how to keep a value. Taken apart as `StrictJson(patch)`.
pub type StrictPatch<T> = StrictJson<T, true>;

impl<S, T, const PATCH: bool> FromRequest<S> for StrictJson<T, PATCH>
where
    S: Send + Sync,
    Arc<Limits>: FromRef<S>,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_json_body(req, &Arc::<Limits>::from_ref(state)).await?;
        let parse = if PATCH { parse_patch } else { parse_json };
        parse(&bytes).map(StrictJson)
    }
}

/// The body of a JSON request: right content type, within the size and time limits.
async fn read_json_body(req: Request, limits: &Limits) -> Result<axum::body::Bytes, ApiError> {
    check_content_type(req.headers().get(header::CONTENT_TYPE))?;
    let body = Limited::new(req.into_body(), limits.max_body_bytes);
    let collected = tokio::time::timeout(limits.body_read_timeout, body.collect())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    limits.body_read_timeout.as_secs()
                ),
            )
        })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_large(limits.max_body_bytes))
        }
        // Also reached when axum's own length check trips first.
        Err(e) if is_length_limit(&*e) => Err(ApiError::too_large(limits.max_body_bytes)),
        Err(e) => Err(ApiError::bad_request(
            "bad_body",
            format!("could not read the request body: {e}"),
        )),
    }
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn check_content_type(value: Option<&header::HeaderValue>) -> Result<(), ApiError> {
    let unsupported = |what: String| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("{what}: send the body as JSON with `Content-Type: application/json`"),
        )
    };
    let Some(value) = value else {
        return Err(unsupported("no Content-Type".into()));
    };
    let text = value
        .to_str()
        .map_err(|_| unsupported("unreadable Content-Type".into()))?;
    let essence = text.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(unsupported(format!("Content-Type `{essence}`")))
    }
}

/// Parses a body into `T`, naming the field on any error. The body must be one JSON object:
/// serde would also take a struct as an array of its fields, which no client means.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| json_error(".", e))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "bad_value",
            format!("the body must be a JSON object, not {}", json_kind(&value)),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_error(&path, e.into_inner())
    })?;
    // Trailing data after the value (`{} {}`) is a syntax error, not ignored.
    de.end().map_err(|e| json_error(".", e))?;
    Ok(value)
}

/// [`parse_json`] for a PATCH body: a member whose value is `null` is refused, naming it.
pub fn parse_patch<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: T = parse_json(bytes)?;
    // parse_json has checked that the body is one valid JSON object.
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| json_error(".", e))?;
    if let Some((key, _)) = object.iter().find(|(_, v)| v.is_null()) {
        return Err(ApiError::bad_request(
            "bad_value",
            format!("`{key}`: null is not a value here; leave the field out to keep it as it is"),
        ));
    }
    Ok(value)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn json_error(path: &str, e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let at = if path.is_empty() || path == "." {
        String::new()
    } else {
        format!("`{path}`: ")
    };
    // serde_json's text ends with " at line L column C"; keep it, it helps with hand-written JSON.
    let text = e.to_string();
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request("bad_json", format!("the body is not valid JSON: {text}"))
        }
        Category::Data => {
            let code = if text.starts_with("unknown field") {
                "unknown_field"
            } else if text.starts_with("missing field") {
                "missing_field"
            } else {
                "bad_value"
            };
            ApiError::bad_request(code, format!("{at}{text}"))
        }
    }
}

/// The raw query string's `key=value` pairs, decoded; every key must be one the endpoint knows.
#[derive(Debug, Default)]
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(QueryPairs::parse(parts.uri.query().unwrap_or("")))
    }
}

impl QueryPairs {
    /// The pairs of a raw query string (`a=1&b=x%20y`), decoded.
    pub fn parse(q: &str) -> QueryPairs {
        QueryPairs(
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// Refuses any parameter not in `known`, and any given twice.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        for (i, (k, _)) in self.0.iter().enumerate() {
            if !known.contains(&k.as_str()) {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!(
                        "unknown query parameter `{k}` (this endpoint takes: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            if self.0[..i].iter().any(|(j, _)| j == k) {
                return Err(ApiError::bad_request(
                    "bad_parameter",
                    format!("query parameter `{k}` is given more than once"),
                ));
            }
        }
        Ok(())
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// An integer parameter within `min..=max`, or `default` when absent.
    pub fn int(&self, key: &str, min: i64, max: i64, default: i64) -> Result<i64, ApiError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        match v.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "bad_parameter",
                format!(
                    "query parameter `{key}` must be an integer from {min} to {max}, not `{v}`"
                ),
            )),
        }
    }
}

/// A queue item id from the path: a positive integer.
pub fn item_id(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ApiError::bad_request(
            "bad_id",
            format!("`{raw}` is not a queue item id (a positive integer)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SettingsPatch;

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<SettingsPatch>(br#"{"auto_upload": "yes"}"#).unwrap_err();
        assert_eq!(
            (e.code.as_ref(), e.status),
            ("bad_value", StatusCode::BAD_REQUEST)
        );
        assert!(
            e.message.starts_with("`auto_upload`: invalid type"),
            "{}",
            e.message
        );

        let e = parse_json::<SettingsPatch>(br#"{"auto_uplaod": true}"#).unwrap_err();
        assert_eq!(e.code, "unknown_field");
        assert!(e.message.contains("auto_uplaod"), "{}", e.message);

        let e = parse_json::<SettingsPatch>(br#"{"data_types": ["photo", "audio"]}"#).unwrap_err();
        assert_eq!(e.code, "bad_value");
        assert!(e.message.starts_with("`data_types[1]`"), "{}", e.message);

        for bad in [&b"{"[..], b"", b"{} {}", b"nul"] {
            assert_eq!(
                parse_json::<SettingsPatch>(bad).unwrap_err().code,
                "bad_json"
            );
        }
    }

    #[test]
    fn a_patch_refuses_null_members() {
        let e =
            parse_patch::<SettingsPatch>(br#"{"network": "any", "data_types": null}"#).unwrap_err();
        assert_eq!(
            (e.code.as_ref(), e.status),
            ("bad_value", StatusCode::BAD_REQUEST)
        );
        assert!(e.message.starts_with("`data_types`: null"), "{}", e.message);
        // The usual errors come first, and a body without nulls is the plain parse.
        assert_eq!(
            parse_patch::<SettingsPatch>(br#"{"nope": null}"#)
                .unwrap_err()
                .code,
            "unknown_field"
        );
        assert!(parse_patch::<SettingsPatch>(br#"{"auto_upload": true}"#).is_ok());
    }

    #[test]
    fn content_type_must_be_json() {
        let ok = |s: &'static str| check_content_type(Some(&header::HeaderValue::from_static(s)));
        assert!(ok("application/json").is_ok());
        assert!(ok("Application/JSON; charset=utf-8").is_ok());
        assert_eq!(
            ok("text/plain").unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            check_content_type(None).unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn query_parameters_are_checked() {
        let q = QueryPairs(vec![("limit".into(), "0".into())]);
        assert!(q.only(&["limit"]).is_ok());
        assert!(q.int("limit", 1, 1000, 100).is_err());
        assert_eq!(
            QueryPairs::default().int("limit", 1, 1000, 100).unwrap(),
            100
        );
        assert_eq!(q.only(&["state"]).unwrap_err().code, "unknown_parameter");
        let twice = QueryPairs(vec![("a".into(), "1".into()), ("a".into(), "2".into())]);
        assert_eq!(twice.only(&["a"]).unwrap_err().code, "bad_parameter");
        assert!(item_id("0").is_err() && item_id("x").is_err() && item_id("7").is_ok());
    }
}
