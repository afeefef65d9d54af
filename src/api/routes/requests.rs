//! Access requests over the API (`postern request …`): file, list, cancel, and, for
//! reviewers, approve and deny; revoke a running grant. The rules (who may ask, who may
//! decide, no self-approval) are checked by the store in the same transaction as the
//! change, against the policy at that moment.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Ctx, body};
use crate::api::ApiError;
use crate::audit::now_ms;
use crate::duration::Dur;
use crate::policy::requests::{AccessRequest, RequestState, requestable_roles};
use crate::store::{NewRequest, RequestError, RequestFilter};

/// A refusal of a request or review action, with its status and code.
pub(super) fn refused(e: RequestError) -> ApiError {
    match e {
        RequestError::NotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        RequestError::Refused(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
        RequestError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        RequestError::Invalid(m) => ApiError::bad_request(m),
        RequestError::Store(e) => ApiError::store(e),
    }
}

/// A request to file.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIn {
    role: String,
    /// Only on this target; every target the role reaches when absent.
    target: Option<String>,
    reason: String,
    /// How long the grant should last once approved: `30m`, `2h`.
    #[serde(rename = "for")]
    #[schema(value_type = String)]
    ttl: Dur,
}

/// A reviewer's or requester's word on a request.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonIn {
    #[serde(default)]
    reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct RequestOut {
    request: AccessRequest,
}

#[derive(Serialize, ToSchema)]
pub struct RequestsOut {
    requests: Vec<AccessRequest>,
}

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// `mine` (default): the caller's requests; `pending`: the pending requests the caller
    /// may decide; `grants`: running grants the caller may revoke.
    view: Option<String>,
}

/// A role the caller may request.
#[derive(Serialize, ToSchema)]
pub struct RequestableOut {
    role: String,
    reviewers: Vec<String>,
    approvals_required: u8,
    /// The longest grant one may ask for (`8h`).
    max_request_ttl: String,
    /// How long a request waits for a decision (`24h`).
    request_expiry: String,
}

#[derive(Serialize, ToSchema)]
pub struct RolesOut {
    roles: Vec<RequestableOut>,
}

/// Files an access request (`postern request create`).
#[utoipa::path(post, path = "/v1/requests", tag = "requests", security(("bearer" = [])),
    request_body = CreateIn,
    responses((status = 201, body = RequestOut), (status = 400, body = super::openapi::ErrorOut),
        (status = 403, body = super::openapi::ErrorOut), (status = 409, body = super::openapi::ErrorOut)))]
pub async fn create(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RequestOut>), ApiError> {
    let (_, user, _) = cx.bearer(&headers).await?;
    let req: CreateIn = body(raw)?;
    let new = NewRequest {
        role: req.role,
        target: req.target,
        reason: req.reason,
        ttl: req.ttl,
    };
    let r = cx
        .shared
        .store
        .create_request(&user.name, &new, now_ms())
        .await
        .map_err(refused)?;
    Ok((StatusCode::CREATED, Json(RequestOut { request: r })))
}

/// Requests: the caller's, the pending ones they may decide, or the running grants they
/// may revoke (`postern request list [--pending|--grants]`).
#[utoipa::path(get, path = "/v1/requests", tag = "requests", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = RequestsOut), (status = 400, body = super::openapi::ErrorOut)))]
pub async fn list(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<RequestsOut>, ApiError> {
    let (policy, user, _) = cx.bearer(&headers).await?;
    let store = &cx.shared.store;
    let requests = match q.view.as_deref().unwrap_or("mine") {
        "mine" => store
            .list_requests(&RequestFilter {
                user: Some(user.name.clone()),
                ..RequestFilter::default()
            })
            .await
            .map_err(ApiError::store)?,
        view @ ("pending" | "grants") => {
            let pending = view == "pending";
            let all = store
                .list_requests(&RequestFilter {
                    state: Some(if pending {
                        RequestState::Pending
                    } else {
                        RequestState::Approved
                    }),
                    ..RequestFilter::default()
                })
                .await
                .map_err(ApiError::store)?;
            let now = now_ms();
            all.into_iter()
                .filter(|r| {
                    if pending {
                        r.awaits(&policy, &user)
                    } else {
                        r.revocable_by(&policy, &user, now)
                    }
                })
                .collect()
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "view `{}` is not mine, pending or grants",
                crate::printable::cell(other)
            )));
        }
    };
    Ok(Json(RequestsOut { requests }))
}

/// The roles the caller may request (`postern request roles`).
#[utoipa::path(get, path = "/v1/requests/roles", tag = "requests", security(("bearer" = [])),
    responses((status = 200, body = RolesOut)))]
pub async fn roles(State(cx): State<Ctx>, headers: HeaderMap) -> Result<Json<RolesOut>, ApiError> {
    let (policy, user, _) = cx.bearer(&headers).await?;
    let roles = requestable_roles(&policy, &user)
        .into_iter()
        .map(|r| RequestableOut {
            role: r.name.clone(),
            reviewers: r.settings.reviewers.clone(),
            approvals_required: r.settings.approvals_required,
            max_request_ttl: r.settings.max_request_ttl.to_string(),
            request_expiry: r.settings.request_expiry.to_string(),
        })
        .collect();
    Ok(Json(RolesOut { roles }))
}

async fn act(
    cx: Ctx,
    headers: HeaderMap,
    id: i64,
    raw: Result<Bytes, BytesRejection>,
    what: &'static str,
) -> Result<Json<RequestOut>, ApiError> {
    let (_, user, _) = cx.bearer(&headers).await?;
    // An empty body is an empty reason.
    let reason: ReasonIn = match &raw {
        Ok(b) if b.is_empty() => ReasonIn::default(),
        _ => body(raw)?,
    };
    let store = &cx.shared.store;
    let now = now_ms();
    let r = match what {
        "approve" => {
            store
                .decide_request(&user.name, id, true, &reason.reason, now)
                .await
        }
        "deny" => {
            store
                .decide_request(&user.name, id, false, &reason.reason, now)
                .await
        }
        "cancel" => store.cancel_request(&user.name, id, now).await,
        _ => {
            store
                .revoke_request(&user.name, id, &reason.reason, now)
                .await
        }
    }
    .map_err(refused)?;
    Ok(Json(RequestOut { request: r }))
}

/// Approves a pending request (a reviewer of its role, not its requester).
#[utoipa::path(post, path = "/v1/requests/{id}/approve", tag = "requests", security(("bearer" = [])),
    params(("id" = i64, Path, description = "The request")), request_body = ReasonIn,
    responses((status = 200, body = RequestOut), (status = 403, body = super::openapi::ErrorOut),
        (status = 404, body = super::openapi::ErrorOut), (status = 409, body = super::openapi::ErrorOut)))]
pub async fn approve(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<RequestOut>, ApiError> {
    act(cx, headers, super::path_id(&id)?, raw, "approve").await
}

/// Denies a pending request, with a reason.
#[utoipa::path(post, path = "/v1/requests/{id}/deny", tag = "requests", security(("bearer" = [])),
    params(("id" = i64, Path, description = "The request")), request_body = ReasonIn,
    responses((status = 200, body = RequestOut), (status = 400, body = super::openapi::ErrorOut),
        (status = 403, body = super::openapi::ErrorOut), (status = 409, body = super::openapi::ErrorOut)))]
pub async fn deny(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<RequestOut>, ApiError> {
    act(cx, headers, super::path_id(&id)?, raw, "deny").await
}

/// Cancels one's own pending request.
#[utoipa::path(post, path = "/v1/requests/{id}/cancel", tag = "requests", security(("bearer" = [])),
    params(("id" = i64, Path, description = "The request")),
    responses((status = 200, body = RequestOut), (status = 404, body = super::openapi::ErrorOut),
        (status = 409, body = super::openapi::ErrorOut)))]
pub async fn cancel(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<RequestOut>, ApiError> {
    act(cx, headers, super::path_id(&id)?, raw, "cancel").await
}

/// Ends a running grant now (its requester, a reviewer of its role, or a console admin);
/// sessions resting on it end within a second.
#[utoipa::path(post, path = "/v1/requests/{id}/revoke", tag = "requests", security(("bearer" = [])),
    params(("id" = i64, Path, description = "The request")), request_body = ReasonIn,
    responses((status = 200, body = RequestOut), (status = 404, body = super::openapi::ErrorOut),
        (status = 409, body = super::openapi::ErrorOut)))]
pub async fn revoke(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<RequestOut>, ApiError> {
    act(cx, headers, super::path_id(&id)?, raw, "revoke").await
}
