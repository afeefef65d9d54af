//! Access reviews over the API (`postern review …`): admins start campaigns, reviewers
//! certify or revoke the grants they may decide, auditors read campaigns and reports.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::requests::refused;
use super::{Ctx, body};
use crate::api::ApiError;
use crate::audit::{Actor, AuditEvent, Outcome, format_ms};
use crate::config::OnDue;
use crate::duration::Dur;
use crate::policy::reviews::{Scope, may_decide};
use crate::policy::{ConsoleRight, Policy, User};
use crate::store::{Campaign, NewCampaign, ReviewItem};

fn needs(policy: &Policy, user: &User, right: ConsoleRight) -> Result<(), ApiError> {
    if policy.console_rights(user).contains(&right) {
        Ok(())
    } else {
        Err(super::ops::lacks(right))
    }
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartIn {
    #[serde(default)]
    name: String,
    /// `role=NAME`, `target-label=KEY=VALUE`; every standing grant when absent.
    #[serde(default)]
    scope: String,
    /// How long reviewers have (`[review] due` when absent).
    #[schema(value_type = Option<String>)]
    due: Option<Dur>,
    /// `revoke` or `report` (`[review] on_due` when absent).
    #[schema(value_type = Option<String>)]
    on_due: Option<OnDue>,
}

#[derive(Serialize, ToSchema)]
pub struct CampaignOut {
    campaign: Campaign,
}

#[derive(Serialize, ToSchema)]
pub struct CampaignsOut {
    campaigns: Vec<Campaign>,
}

#[derive(Serialize, ToSchema)]
pub struct ItemsOut {
    items: Vec<ReviewItem>,
}

#[derive(Serialize, ToSchema)]
pub struct ItemOut {
    item: ReviewItem,
}

#[derive(Deserialize, IntoParams)]
pub struct ItemsQuery {
    /// One campaign's items (all of them); without it, the open items of running campaigns.
    campaign: Option<i64>,
    /// Only the open items the caller may decide (any user; otherwise the audit right).
    #[serde(default)]
    mine: bool,
}

#[derive(Deserialize, IntoParams)]
pub struct ReportQuery {
    /// `json` (default) or `csv`.
    format: Option<String>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideIn {
    #[serde(default)]
    reason: String,
}

/// Starts a campaign (admin right).
#[utoipa::path(post, path = "/v1/reviews", tag = "reviews", security(("bearer" = [])),
    request_body = StartIn,
    responses((status = 201, body = CampaignOut), (status = 400, body = super::openapi::ErrorOut), (status = 403, body = super::openapi::ErrorOut)))]
pub async fn start(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CampaignOut>), ApiError> {
    let (policy, user, _) = cx.bearer(&headers).await?;
    needs(&policy, &user, ConsoleRight::Admin)?;
    let req: StartIn = match &raw {
        Ok(b) if b.is_empty() => StartIn::default(),
        _ => body(raw)?,
    };
    let cfg = &cx.shared.config.review;
    let scope = Scope::parse(&req.scope).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let now = crate::clock::now_ms();
    let name: String = req.name.trim().chars().take(100).collect();
    let c = NewCampaign {
        name: if name.is_empty() {
            format!("review {}", format_ms(now))
        } else {
            name
        },
        scope,
        due: req.due.unwrap_or(cfg.due),
        revoke_at_due: req.on_due.unwrap_or(cfg.on_due) == OnDue::Revoke,
        stale_after: cfg.stale_after,
    };
    let campaign = cx
        .shared
        .store
        .start_review(&Actor::of(&user), &c, now)
        .await
        .map_err(ApiError::store)?;
    Ok((StatusCode::CREATED, Json(CampaignOut { campaign })))
}

/// Campaigns, newest first (audit right).
#[utoipa::path(get, path = "/v1/reviews", tag = "reviews", security(("bearer" = [])),
    responses((status = 200, body = CampaignsOut), (status = 403, body = super::openapi::ErrorOut)))]
pub async fn list(
    State(cx): State<Ctx>,
    headers: HeaderMap,
) -> Result<Json<CampaignsOut>, ApiError> {
    let (policy, user, _) = cx.bearer(&headers).await?;
    needs(&policy, &user, ConsoleRight::Audit)?;
    let campaigns = cx
        .shared
        .store
        .review_campaigns()
        .await
        .map_err(ApiError::store)?;
    Ok(Json(CampaignsOut { campaigns }))
}

/// Review items: the open ones the caller may decide (`mine`), or any (audit right).
#[utoipa::path(get, path = "/v1/reviews/items", tag = "reviews", security(("bearer" = [])),
    params(ItemsQuery),
    responses((status = 200, body = ItemsOut), (status = 403, body = super::openapi::ErrorOut)))]
pub async fn items(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<ItemsQuery>,
) -> Result<Json<ItemsOut>, ApiError> {
    let (policy, user, _) = cx.bearer(&headers).await?;
    if !q.mine {
        needs(&policy, &user, ConsoleRight::Audit)?;
    }
    let all = cx
        .shared
        .store
        .review_items(q.campaign)
        .await
        .map_err(ApiError::store)?;
    let items = if q.mine {
        all.into_iter()
            .filter(|i| i.decision.is_none() && may_decide(&policy, &user, &i.user, &i.role))
            .collect()
    } else {
        all
    };
    Ok(Json(ItemsOut { items }))
}

async fn decide(
    cx: Ctx,
    headers: HeaderMap,
    id: i64,
    raw: Result<Bytes, BytesRejection>,
    certify: bool,
) -> Result<Json<ItemOut>, ApiError> {
    let (_, user, _) = cx.bearer(&headers).await?;
    let req: DecideIn = match &raw {
        Ok(b) if b.is_empty() => DecideIn::default(),
        _ => body(raw)?,
    };
    let item = cx
        .shared
        .store
        .decide_review_item(&user.name, id, certify, &req.reason, crate::clock::now_ms())
        .await
        .map_err(refused)?;
    Ok(Json(ItemOut { item }))
}

/// Keeps a grant (a reviewer of its role, or an admin; never its holder).
#[utoipa::path(post, path = "/v1/reviews/items/{id}/certify", tag = "reviews", security(("bearer" = [])),
    params(("id" = i64, Path, description = "The item")), request_body = DecideIn,
    responses((status = 200, body = ItemOut), (status = 403, body = super::openapi::ErrorOut), (status = 409, body = super::openapi::ErrorOut)))]
pub async fn certify(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<ItemOut>, ApiError> {
    decide(cx, headers, super::path_id(&id)?, raw, true).await
}

/// Takes a grant away now, with a reason; sessions resting on it end within a second.
#[utoipa::path(post, path = "/v1/reviews/items/{id}/revoke", tag = "reviews", security(("bearer" = [])),
    params(("id" = i64, Path, description = "The item")), request_body = DecideIn,
    responses((status = 200, body = ItemOut), (status = 400, body = super::openapi::ErrorOut), (status = 403, body = super::openapi::ErrorOut), (status = 409, body = super::openapi::ErrorOut)))]
pub async fn revoke(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<ItemOut>, ApiError> {
    decide(cx, headers, super::path_id(&id)?, raw, false).await
}

/// Every item of a campaign with its decision, reviewer, time and reason (audit right).
#[utoipa::path(get, path = "/v1/reviews/{id}/report", tag = "reviews", security(("bearer" = [])),
    params(("id" = i64, Path, description = "The campaign"), ReportQuery),
    responses((status = 200, description = "JSON (`campaign`, `items`) or CSV"), (status = 403, body = super::openapi::ErrorOut), (status = 404, body = super::openapi::ErrorOut)))]
pub async fn report(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let (policy, user, _) = cx.bearer(&headers).await?;
    needs(&policy, &user, ConsoleRight::Audit)?;
    let id = super::path_id(&id)?;
    let store = &cx.shared.store;
    let Some(campaign) = store.review_campaign(id).await.map_err(ApiError::store)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no review campaign #{id}"),
        ));
    };
    let items = store
        .review_items(Some(id))
        .await
        .map_err(ApiError::store)?;
    let format = q.format.as_deref().unwrap_or("json");
    let e = AuditEvent::new(
        "review.report",
        &Actor::of(&user),
        Outcome::Success,
        serde_json::json!({ "campaign": id, "format": format, "items": items.len() }),
    );
    if let Err(err) = store.append_audit(&e).await {
        return Err(ApiError::store(err));
    }
    match format {
        "json" => {
            Ok(Json(serde_json::json!({ "campaign": campaign, "items": items })).into_response())
        }
        "csv" => Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::store::review_csv(&items),
        )
            .into_response()),
        other => Err(ApiError::bad_request(format!(
            "format `{}` is not json or csv",
            crate::printable::cell(other)
        ))),
    }
}
