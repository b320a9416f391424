//! The route table and one small handler per endpoint (INTERFACE.md section 5).
//!
//! Handlers parse nothing themselves: their arguments are already typed values from
//! `extract`, and each is a call into [`App`] plus the answer's shape. `docs/openapi.yaml`
//! describes the same table; a test checks that the two list the same (method, path) pairs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::extract::{item_id, ApiError, QueryPairs, StrictJson, StrictPatch};
use super::views::{HistoryView, ItemView};
use super::Limits;
use crate::app::App;
use crate::credentials::{self, Pairing};
use crate::settings::SettingsPatch;
use crate::store::ItemState;

/// Every (method, path) the API serves, with its handler: the router is built from this one
/// list, and the OpenAPI test compares it with `docs/openapi.yaml`, so neither the server nor
/// the spec can grow a route the other lacks.
pub const ROUTES: &[(&str, &str, Handler)] = &[
    ("GET", "/v1/status", || get(status)),
    ("GET", "/v1/queue", || get(queue)),
    ("POST", "/v1/uploads", || post(uploads)),
    ("POST", "/v1/queue/{id}/retry", || post(retry)),
    ("DELETE", "/v1/queue/{id}", || delete(cancel)),
    ("POST", "/v1/pause", || post(pause)),
    ("POST", "/v1/resume", || post(resume)),
    ("GET", "/v1/settings", || get(settings)),
    ("PATCH", "/v1/settings", || patch(update_settings)),
    ("PUT", "/v1/account", || put(pair)),
    ("GET", "/v1/account", || get(account)),
    ("DELETE", "/v1/account", || delete(unpair)),
    ("PUT", "/v1/recording", || put(recording)),
    ("PUT", "/v1/network", || put(network)),
    ("GET", "/v1/history", || get(history)),
    ("GET", "/v1/privacy", || get(privacy)),
    ("GET", "/v1/space", || get(space)),
    ("GET", "/v1/files/{*storage_path}", || get(file)),
    ("GET", "/v1/report", || get(report)),
    ("GET", "/v1/events", || get(super::sse::events)),
    ("GET", "/v1/health", || get(health)),
];

/// Makes the handler of one route.
pub type Handler = fn() -> MethodRouter<Ctx>;

/// How old a loop's last heartbeat may be before `GET /v1/health` says 503.
pub const HEALTH_MAX_AGE: Duration = Duration::from_secs(30);

/// The router's state: the app, and the limits the extractors enforce.
#[derive(Clone)]
pub struct Ctx {
    pub app: Arc<App>,
    pub limits: Arc<Limits>,
}

impl FromRef<Ctx> for Arc<App> {
    fn from_ref(c: &Ctx) -> Arc<App> {
        c.app.clone()
    }
}

impl FromRef<Ctx> for Arc<Limits> {
    fn from_ref(c: &Ctx) -> Arc<Limits> {
        c.limits.clone()
    }
}

/// The API as an axum router over `app`, with JSON answers for unknown routes (404), wrong
/// methods (405) and oversize bodies (413).
pub fn router(app: Arc<App>, limits: Arc<Limits>) -> Router {
    let mut r = Router::new();
    for (_, path, handler) in ROUTES {
        r = r.route(path, handler());
    }
    let max = limits.max_body_bytes;
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| refuse_declared_oversize(req, next, max),
        ))
        .with_state(Ctx { app, limits })
}

/// The 403 answered to a peer the credential check refused.
pub fn forbidden(uid: u32) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "uid {uid} may not use the cambackup control socket (allowed: the daemon's \
             user, control.allowed_uids, and primary groups in control.allowed_gids)"
        ),
    )
}

/// A body whose declared length is over the cap gets 413 on any route, before anything reads
/// it; bodies without a length are capped while read (`StrictJson`).
async fn refuse_declared_oversize(req: Request, next: Next, max: usize) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return ApiError::too_large(max).into_response();
    }
    next.run(req).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no such endpoint: {} (see docs/openapi.yaml)",
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    let path = req.uri().path();
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, p, _)| path_matches(p, path))
        .map(|(m, _, _)| *m)
        .collect();
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {path}; use {}",
            req.method(),
            allowed.join(" or ")
        ),
    )
}

/// Whether a concrete path fits a route pattern (`{x}` matches one segment, `{*x}` the rest).
fn path_matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut q) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.starts_with("{*") => return !b.is_empty(),
            (Some(a), Some(b)) if a == b || (a.starts_with('{') && !b.is_empty()) => {}
            _ => return false,
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Refuses any query parameter on endpoints that take none.
fn no_query(q: &QueryPairs) -> ApiResult<()> {
    q.only(&[])
}

async fn status(State(app): State<Arc<App>>, q: QueryPairs) -> ApiResult<Response> {
    no_query(&q)?;
    Ok(Json(app.status()?).into_response())
}

async fn queue(State(app): State<Arc<App>>, q: QueryPairs) -> ApiResult<Response> {
    q.only(&["state", "limit", "after"])?;
    // An empty `state=` is refused like any other unknown state: it would otherwise read as
    // "all states", which a client that lost its value does not mean.
    let state = match q.get("state") {
        None => None,
        Some(s) => Some(ItemState::parse(s).ok_or_else(|| {
            let all: Vec<&str> = ItemState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(
                "bad_parameter",
                format!(
                    "query parameter `state` must be one of {}, not `{s}`",
                    all.join(", ")
                ),
            )
        })?),
    };
    let limit = q.int("limit", 1, 1000, 100)?;
    let after = q.int("after", 0, i64::MAX, 0)?;
    let items = app.queue(state, limit as u32, after)?;
    // A full page may have more behind it: tell the client where to continue.
    let next_after = (items.len() as i64 == limit)
        .then(|| items.last().map(|i| i.id))
        .flatten();
    let items: Vec<ItemView> = items.into_iter().map(ItemView::from).collect();
    Ok(Json(json!({"items": items, "next_after": next_after})).into_response())
}

/// `POST /v1/uploads`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadRequest {
    paths: Vec<String>,
}

async fn uploads(
    State(app): State<Arc<App>>,
    q: QueryPairs,
    StrictJson(req): StrictJson<UploadRequest>,
) -> ApiResult<Response> {
    no_query(&q)?;
    let accepted = app.upload(&req.paths)?;
    // 202: queued, not uploaded; the upload runs when the scheduler gets to it.
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": accepted}))).into_response())
}

async fn retry(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(ItemView::from(app.retry(item_id(&id)?)?)).into_response())
}

async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(ItemView::from(app.cancel(item_id(&id)?).await?)).into_response())
}

async fn pause(State(app): State<Arc<App>>, q: QueryPairs) -> ApiResult<Response> {
    no_query(&q)?;
    app.set_paused(true)?;
    Ok(Json(json!({"paused": true})).into_response())
}

async fn resume(State(app): State<Arc<App>>, q: QueryPairs) -> ApiResult<Response> {
    no_query(&q)?;
    app.set_paused(false)?;
    Ok(Json(json!({"paused": false})).into_response())
}

async fn settings(State(app): State<Arc<App>>, q: QueryPairs) -> ApiResult<Response> {
    no_query(&q)?;
    Ok(Json(app.settings()).into_response())
}

async fn update_settings(
    State(app): State<Arc<App>>,
    q: QueryPairs,
    StrictJson(patch): StrictPatch<SettingsPatch>,
) -> ApiResult<Response> {
    no_query(&q)?;
    patch
        .validate()
        .map_err(|e| ApiError::bad_request("bad_value", e.to_string()))?;
    Ok(Json(app.update_settings(&patch)?).into_response())
}

async fn pair(
    State(app): State<Arc<App>>,
    q: QueryPairs,
    StrictJson(req): StrictJson<PairRequest>,
) -> ApiResult<Response> {
    no_query(&q)?;
    Ok(Json(app.pair(check_pair_request(req)?).await?).into_response())
}

/// `PUT /v1/account`'s body, as it comes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PairRequest {
    user_id: String,
    token: String,
    #[serde(default)]
    region: Option<String>,
}

/// Parses the body into a [`Pairing`] (the shapes `docs/openapi.yaml` gives `user_id` and
/// `token` in its `PairRequest` patterns, so the spec and the server refuse the same bodies).
pub(crate) fn check_pair_request(req: PairRequest) -> ApiResult<Pairing> {
    Ok(Pairing {
        user_id: credentials::UserId::parse(&req.user_id)
            .map_err(|m| ApiError::bad_request("bad_user_id", m))?,
        token: credentials::parse_token(&req.token)
            .map_err(|m| ApiError::bad_request("bad_token", m))?,
        region: req.region,
    })
}

async fn account(State(app): State<Arc<App>>, q: QueryPairs) -> ApiResult<Response> {
    no_query(&q)?;
    Ok(Json(app.account()).into_response())
}

async fn unpair(State(app): State<Arc<App>>, q: QueryPairs) -> ApiResult<Response> {
    no_query(&q)?;
    Ok(Json(app.unpair().await?).into_response())
}

/// `PUT /v1/recording`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Recording {
    active: bool,
}

async fn recording(
    State(app): State<Arc<App>>,
    q: QueryPairs,
    StrictJson(req): StrictJson<Recording>,
) -> ApiResult<Response> {
    no_query(&q)?;
    app.set_recording(req.active);
    Ok(Json(json!({"active": req.active})).into_response())
}

/// `PUT /v1/network`: `metered` must be present, `null` included (a missing field is more
/// likely a client bug than "let the daemon decide").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkRequest {
    #[serde(default, deserialize_with = "present")]
    metered: Option<Option<bool>>,
    /// The network's name the app showed the user (`status.uplink.network_name.ssid`): the
    /// answer is only taken if the camera is still on that network (409 `network_changed`).
    #[serde(default)]
    ssid: Option<String>,
}

/// A field that is present, `null` or not: `Some(value)`.
fn present<'de, D>(d: D) -> Result<Option<Option<bool>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<bool>::deserialize(d).map(Some)
}

async fn network(
    State(app): State<Arc<App>>,
    q: QueryPairs,
    StrictJson(req): StrictJson<NetworkRequest>,
) -> ApiResult<Response> {
    no_query(&q)?;
    let Some(metered) = req.metered else {
        return Err(ApiError::bad_request(
            "missing_field",
            "`metered` is required: true, false, or null to let the daemon decide",
        ));
    };
    let (metered, network) = app.set_metered(metered, req.ssid.as_deref())?;
    // `metered`: the answer now in force there. `network_name` only when the answer is for
    // one network: without a name the answer is the one it always was, and so is the reply.
    let mut reply = json!({"metered": metered});
    if let Some(n) = network {
        reply["network_name"] = json!(n);
    }
    Ok(Json(reply).into_response())
}

async fn history(State(app): State<Arc<App>>, q: QueryPairs) -> ApiResult<Response> {
    q.only(&["limit"])?;
    let limit = q.int("limit", 1, 10_000, 100)?;
    let entries: Vec<HistoryView> = app
        .history(limit as u32)?
        .into_iter()
        .map(HistoryView::from)
        .collect();
    Ok(Json(json!({"entries": entries})).into_response())
}

async fn privacy(State(app): State<Arc<App>>, q: QueryPairs) -> ApiResult<Response> {
    no_query(&q)?;
    Ok(Json(app.privacy()).into_response())
}

/// `GET /v1/space`: read-only, like `cambackup space --dry-run`; deletes nothing.
async fn space(State(app): State<Arc<App>>, q: QueryPairs) -> ApiResult<Response> {
    no_query(&q)?;
    match crate::freeing::preview(&app).await {
        Ok(v) => Ok(Json(v).into_response()),
        Err(why) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            why,
        )),
    }
}

/// `GET /v1/files/{storage_path}`: one file's state and why. The path comes as one
/// percent-encoded segment (`DCIM%2FIMG_0001.JPG`, as the spec's parameter is sent) or with its
/// slashes as they are; decoded here from the raw URI, so a bad escape is a JSON 400 naming it.
async fn file(State(app): State<Arc<App>>, q: QueryPairs, req: Request) -> ApiResult<Response> {
    no_query(&q)?;
    let raw = req
        .uri()
        .path()
        .strip_prefix("/v1/files/")
        .unwrap_or_default();
    let path = percent_decode(raw).ok_or_else(|| {
        ApiError::bad_request(
            "bad_path",
            format!("the path `{raw}` is not percent-encoded UTF-8"),
        )
    })?;
    // Off the runtime's one thread: it looks at the card (a directory listing for the card's
    // spelling of the name), which a big folder on a FUSE card or a failing card makes slow.
    let view = tokio::task::spawn_blocking(move || app.file(&path))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok(Json(view).into_response())
}

/// `%XX` escapes to bytes, read as UTF-8; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let (b, mut out, mut i) = (s.as_bytes(), Vec::with_capacity(s.len()), 0);
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `GET /v1/report?with_names=`: the support bundle, a `.tar.gz` (`crate::report`), made on
/// a blocking thread (it reads `/proc`, the card's file system and the store).
async fn report(State(app): State<Arc<App>>, q: QueryPairs) -> ApiResult<Response> {
    q.only(&["with_names"])?;
    let with_names = match q.get("with_names") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(ApiError::bad_request(
                "bad_parameter",
                format!("query parameter `with_names` must be true or false, not `{v}`"),
            ))
        }
    };
    let bundle = tokio::task::spawn_blocking(move || crate::report::build(&app, with_names))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"cambackup-report.tar.gz\"",
            ),
        ],
        bundle,
    )
        .into_response())
}

async fn health(State(app): State<Arc<App>>, q: QueryPairs) -> ApiResult<Response> {
    no_query(&q)?;
    match app.health(HEALTH_MAX_AGE) {
        Ok(()) => Ok(Json(json!({"ok": true})).into_response()),
        Err(why) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            why,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns() {
        assert!(path_matches("/v1/queue/{id}", "/v1/queue/7"));
        assert!(path_matches("/v1/queue/{id}/retry", "/v1/queue/x/retry"));
        assert!(!path_matches("/v1/queue/{id}", "/v1/queue"));
        assert!(!path_matches("/v1/queue/{id}", "/v1/queue/7/retry"));
        assert!(path_matches("/v1/status", "/v1/status"));
        assert!(path_matches("/v1/files/{*p}", "/v1/files/DCIM/A.JPG"));
        assert!(path_matches("/v1/files/{*p}", "/v1/files/DCIM%2FA.JPG"));
        assert!(!path_matches("/v1/files/{*p}", "/v1/files/"));
        assert_eq!(
            percent_decode("DCIM%2FA%20B.JPG").as_deref(),
            Some("DCIM/A B.JPG")
        );
        assert_eq!(percent_decode("%2Fmnt/x").as_deref(), Some("/mnt/x"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    /// The edge refuses what the spec's `PairRequest` patterns refuse (the same cases pass
    /// and fail there; schemathesis checks the two against each other).
    #[test]
    fn pair_requests_are_checked_like_the_spec_says() {
        let req = |user_id: &str, token: &str| PairRequest {
            user_id: user_id.into(),
            token: token.into(),
            region: None,
        };
        let user_ids = [
            ("u-1", true),
            (" a ", true),
            ("Ünïcode ☃", true),
            ("", false),
            (" ", false),
            ("\u{3000}\u{a0}", false),
            ("a\u{1}", false),
            ("a\u{85}b", false),
            ("a\tb", false),
        ];
        for (id, ok) in user_ids {
            assert_eq!(check_pair_request(req(id, "t")).is_ok(), ok, "{id:?}");
        }
        assert!(check_pair_request(req(&"é".repeat(256), "t")).is_ok());
        assert!(check_pair_request(req(&"x".repeat(257), "t")).is_err());
        let tokens = [
            ("tok-SECRET-123", true),
            ("~!", true),
            ("a b", false),
            ("", false),
            ("é", false),
            ("a\n", false),
        ];
        for (token, ok) in tokens {
            assert_eq!(check_pair_request(req("u", token)).is_ok(), ok, "{token:?}");
        }
        assert!(check_pair_request(req("u", &"t".repeat(4097))).is_err());
    }

    /// The OpenAPI document lists exactly the routes the server has.
    #[test]
    fn openapi_matches_the_route_table() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml"),
        )
        .unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(doc["openapi"].as_str(), Some("3.0.3"));
        let mut in_spec = std::collections::BTreeSet::new();
        for (path, ops) in doc["paths"].as_mapping().unwrap() {
            for (method, _) in ops.as_mapping().unwrap() {
                let m = method.as_str().unwrap();
                if m == "parameters" {
                    continue;
                }
                in_spec.insert((m.to_uppercase(), path.as_str().unwrap().to_string()));
            }
        }
        // The spec names a rest-of-path parameter as any other (`{x}`); axum as `{*x}`.
        let in_server: std::collections::BTreeSet<_> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.replace("{*", "{")))
            .collect();
        assert_eq!(in_spec, in_server);

        // Every `$ref` points at something that exists.
        fn refs(v: &serde_yaml_ng::Value, out: &mut Vec<String>) {
            match v {
                serde_yaml_ng::Value::Mapping(m) => {
                    for (k, v) in m {
                        if k.as_str() == Some("$ref") {
                            out.push(v.as_str().unwrap().to_string());
                        } else {
                            refs(v, out);
                        }
                    }
                }
                serde_yaml_ng::Value::Sequence(s) => s.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let mut at = &doc;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            assert!(!at.is_null(), "dangling $ref {r}");
        }
    }
}
