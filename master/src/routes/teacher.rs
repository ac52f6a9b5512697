//! What the teacher's own requests need: the page is this master's own (not another site's
//! page in the teacher's browser), and the teacher password, throttled per address.

use axum::http::{HeaderMap, header};
use common::ApiError;

use crate::state::AppState;

/// Whether the request came from a page of another origin than ours. Browsers send `Origin` on
/// every cross-origin request and on same-origin POSTs; scripts send none.
pub(crate) fn cross_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_none() || origin_host != host
}

/// The teacher password check, throttled per address (docs/security.md).
pub(crate) fn check_teacher(
    st: &AppState,
    peer: std::net::IpAddr,
    given: Option<&str>,
) -> Result<(), ApiError> {
    let refuse = |reason: &'static str, e: ApiError| {
        st.metrics.token_refusals.with_label_values(&[reason]).inc();
        tracing::info!(%peer, reason, error = %e, "teacher request refused");
        e
    };
    if let Err(wait) = st.login_throttle.check(peer) {
        tracing::warn!(%peer, retry_after = wait, "teacher login throttled after repeated wrong passwords");
        st.metrics
            .token_refusals
            .with_label_values(&["login_throttled"])
            .inc();
        return Err(ApiError::too_many(
            "login_throttled",
            "too many wrong passwords from this address; wait before trying again",
            wait,
        ));
    }
    match (&st.cfg.teacher_credential, given) {
        (None, _) => Err(refuse(
            "teacher_disabled",
            ApiError::forbidden(
                "teacher login is not configured on this master (TEACHER_PASSWORD)",
            ),
        )),
        (Some(want), Some(g)) if common::secret::credential_eq(want, g) => {
            st.login_throttle.succeeded(peer);
            Ok(())
        }
        _ => {
            let block = st.login_throttle.failed(peer);
            tracing::warn!(%peer, blocked_for = ?block, "wrong teacher password");
            Err(refuse(
                "teacher_credential",
                ApiError::unauthorized("wrong teacher credential"),
            ))
        }
    }
}
