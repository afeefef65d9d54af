//! The OpenAPI document of the `/v1/` endpoints, generated from their handlers.

use serde::Serialize;
use utoipa::ToSchema;

use crate::api::ApiError;

/// Every error: a stable machine code and a message for people.
#[derive(Serialize, ToSchema)]
pub struct ErrorOut {
    code: String,
    message: String,
    /// Seconds to wait (`rate_limited`).
    retry_after: Option<u64>,
}

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The token `postern login` prints (or POST /v1/login returns)",
                ))
                .build(),
        );
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", scheme);
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "postern", description = "postern's HTTPS API: the console's operations as JSON."),
    paths(super::ready, super::login::login, super::login::login_bot, super::whoami, super::db::db_login, super::targets::targets, super::ops::sessions, super::ops::session,
        super::ops::kill, super::ops::audit, super::ops::check, super::ops::lock, super::ops::unlock,
        super::requests::create, super::requests::list, super::requests::roles, super::requests::approve,
        super::requests::deny, super::requests::cancel, super::requests::revoke,
        super::reviews::start, super::reviews::list, super::reviews::items, super::reviews::certify,
        super::reviews::revoke, super::reviews::report),
    components(schemas(ErrorOut)),
    modifiers(&Bearer)
)]
pub(super) struct Doc;

/// `GET /v1/openapi.json`: this API, described from its handlers.
pub async fn openapi() -> Result<([(axum::http::HeaderName, &'static str); 1], String), ApiError> {
    use utoipa::OpenApi;
    let json = Doc::openapi()
        .to_json()
        .map_err(|e| ApiError::internal("cannot render the OpenAPI document", e))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    ))
}
