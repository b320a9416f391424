//! The account: pairing, unpairing, what the server last said about the token.
//!
//! Invariant: unpairing erases the account file first, then everything else the account left
//! (its manual requests, upload URLs, history); an unpairing cut short is finished at the next
//! start (`App::new`), so nothing of one account carries on under the next.

use std::time::Duration;

use serde::Serialize;

use super::{App, AppError};
use crate::credentials::{self, Account};
use crate::secret::Secret;
use crate::upload::tus::{TokenVerdict, TusError};

/// How long pairing waits for the server's word on the token: the app waits on the answer,
/// and a token unchecked is checked again by the first upload anyway.
const TOKEN_CHECK_DEADLINE: Duration = Duration::from_secs(10);

/// What the server last said about the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountStatus {
    Ok,
    Unauthorized(String),
    SubscriptionInactive(String),
}

/// Set while an account is paired; erased with the rest of the account's data (`account.*`).
pub(super) const PAIRED_KEY: &str = "account.paired";

impl AccountStatus {
    pub(super) const KEY: &'static str = "account.status";

    pub(super) fn as_str(&self) -> &'static str {
        match self {
            AccountStatus::Ok => "ok",
            AccountStatus::Unauthorized(_) => "unauthorized",
            AccountStatus::SubscriptionInactive(_) => "subscription_inactive",
        }
    }
}

/// `GET /v1/account`: never the token.
#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    pub paired: bool,
    pub user_id: Option<String>,
    pub region: Option<String>,
    pub endpoint: String,
    /// `ok`, `unauthorized` or `subscription_inactive`; absent when not paired.
    pub status: Option<&'static str>,
}

/// `PUT /v1/account`'s answer: the account, and what the server said of the token.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    #[serde(flatten)]
    pub account: AccountView,
    pub token_check: TokenCheck,
}

/// Whether the server accepted the token at pairing, or why it was not asked.
#[derive(Debug, Clone, Serialize)]
pub struct TokenCheck {
    /// The server answered and did not refuse the token.
    pub checked: bool,
    /// One sentence: what the server answered, or why it was not asked (offline, no network
    /// the user approves for uploads, no answer within 10 s). Unchecked, the first upload
    /// checks it: a refusal then shows as the `unauthorized` state.
    pub message: String,
}

/// `DELETE /v1/account`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct Unpaired {
    /// Unfinished server uploads ended with tus termination.
    pub terminated: usize,
    /// Unfinished server uploads the server could not or would not terminate.
    pub not_terminated: usize,
}

impl App {
    /// `GET /v1/account`.
    pub fn account(&self) -> AccountView {
        let live = self.live();
        let region = live.account.as_ref().and_then(|a| a.region.clone());
        AccountView {
            paired: live.account.is_some(),
            user_id: live.account.as_ref().map(|a| a.user_id.clone()),
            endpoint: self
                .config
                .cloud
                .endpoint_for(region.as_deref())
                .to_string(),
            region,
            status: live.account.as_ref().map(|_| live.account_status.as_str()),
        }
    }

    /// The paired account, if any (for the scheduler).
    pub fn account_for_upload(&self) -> Option<Account> {
        let live = self.live();
        match live.account_status {
            AccountStatus::Ok => live.account.clone(),
            _ => None,
        }
    }

    /// `PUT /v1/account`: pairs (or re-pairs) and clears an earlier unauthorized state. The
    /// user ID and token were checked at the edge ([`credentials::Pairing`]); the region is
    /// checked here, against the config. Stops a freeing pass as unpairing does: it gathered
    /// the completed uploads under the account it started with.
    ///
    /// First the token is shown to the server (one authenticated `HEAD` of the endpoint, over
    /// a network the user approves for uploads): a 401 or 403 refuses the pairing (400
    /// `token_refused`) and nothing changes. Offline, it pairs and says the token is unchecked.
    pub async fn pair(&self, req: credentials::Pairing) -> Result<Paired, AppError> {
        self.check_region(req.region.as_deref())?;
        // A pass gathered its uploads under the account it started with: stopped at once, not
        // after the server's answer; a refused token lets it start again.
        let _hold = self.hold_freeing("the user paired");
        let token_check = self.check_token(&req).await?;
        let account = self.pair_checked(req)?;
        Ok(Paired {
            account,
            token_check,
        })
    }

    /// The region must name a `[cloud.regions]` entry when that table exists.
    fn check_region(&self, region: Option<&str>) -> Result<(), AppError> {
        let regions = &self.config.cloud.regions;
        if let Some(r) = region {
            if !regions.is_empty() && !regions.contains_key(r) {
                let known: Vec<&str> = regions.keys().map(String::as_str).collect();
                return Err(AppError::bad_request(
                    "unknown_region",
                    format!(
                        "`region` \"{r}\" is not one of the configured regions: {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Asks the server whether it takes the token; `Err` when it refuses it.
    async fn check_token(&self, req: &credentials::Pairing) -> Result<TokenCheck, AppError> {
        let endpoint = self.config.cloud.endpoint_for(req.region.as_deref());
        let unchecked = |why: String| TokenCheck {
            checked: false,
            message: format!("the token is not checked yet: {why}; the first upload checks it"),
        };
        // Nothing goes out before the clock is set (no certificate could be verified).
        if !self.live().clock_set {
            return Ok(unchecked("the camera's clock is not set".into()));
        }
        match self
            .client
            .check_token(endpoint, &req.token, TOKEN_CHECK_DEADLINE)
            .await
        {
            Ok(TokenVerdict::Accepted { .. }) => Ok(TokenCheck {
                checked: true,
                message: format!("the server at {endpoint} accepted the token"),
            }),
            Ok(TokenVerdict::Refused { status, message }) => Err(AppError::bad_request(
                "token_refused",
                format!(
                    "the server at {endpoint} refused this token ({status}{}): nothing was \
                     paired; check the token and the account it belongs to",
                    if message.is_empty() {
                        String::new()
                    } else {
                        format!(": {message}")
                    }
                ),
            )),
            Err(TusError::NoUplink) => Ok(unchecked(
                "no network the user approves for uploads is up".into(),
            )),
            Err(e @ (TusError::Network { .. } | TusError::Stalled { .. })) => {
                Ok(unchecked(format!("the server could not be reached ({e})")))
            }
            Err(e) => Ok(unchecked(e.to_string())),
        }
    }

    /// Pairing once the token was shown to the server (or could not be).
    fn pair_checked(&self, req: credentials::Pairing) -> Result<AccountView, AppError> {
        // The last account's data goes before the next account comes (a full disk may have
        // kept an unpairing from finishing).
        if self.live().unpair_unfinished {
            self.finish_unpairing()
                .map_err(|e| AppError::no_room("pairing", &e))?;
        }
        let account = Account {
            user_id: req.user_id.into_string(),
            token: req.token,
            region: req.region.clone(),
        };
        // Until the old account's upload URLs are forgotten below, and the new token is in.
        let _hold = self.hold_freeing("the user paired");
        // Pairing is a grant: refused for lack of space (507), like consent on, before
        // anything changed. (An earlier account's "refused" state may go first: it is found
        // again at its next upload.)
        self.store
            .set_kv(AccountStatus::KEY, None)
            .map_err(|e| AppError::no_room("pairing", &e))?;
        credentials::save(&self.config.state.dir, &account)
            .map_err(|e| AppError::no_room_if(e.is_disk_full(), "pairing", &e))?;
        // Paired now. The mark only lets a start finish an unpairing cut short: not worth
        // refusing a pairing already saved.
        if let Err(e) = self.store.set_kv(PAIRED_KEY, Some("1")) {
            tracing::warn!(error = %e, "cannot mark the device as paired");
            self.store_failed(&e);
        }
        let switched = {
            let mut live = self.live();
            let switched = live
                .account
                .as_ref()
                .is_some_and(|a| a.user_id != account.user_id || a.region != account.region);
            if switched {
                // Uploads in flight carry the old account's user ID (and go to its region):
                // stop them, and start the unfinished ones anew under the new account.
                for f in live.in_flight.values() {
                    f.stop.cancel();
                }
            }
            live.account = Some(account);
            live.account_status = AccountStatus::Ok;
            switched
        };
        if switched {
            self.store.forget_upload_urls()?;
            tracing::info!("paired with a different account: unfinished uploads start anew");
        }
        tracing::info!("paired with an account");
        self.reevaluate();
        self.kick.notify_one();
        Ok(self.account())
    }

    /// `DELETE /v1/account`: stops uploads, ends the unfinished server uploads, and erases the
    /// token, the user ID, the upload URLs and the history. A withdrawal: once the account
    /// file is erased (which needs no free space) it is done; what a full disk keeps the
    /// database from erasing is erased as soon as there is room (and at the next start).
    pub async fn unpair(&self) -> Result<Unpaired, AppError> {
        // Until the account's data is erased: a pass starting meanwhile would find nothing to
        // free with anyway, and a pairing that follows at once must not meet a pass either.
        let _hold = self.hold_freeing("the user unpaired");
        let account = {
            let mut live = self.live();
            let a = live.account.take();
            live.account_status = AccountStatus::Ok;
            for f in live.in_flight.values() {
                f.stop.cancel();
            }
            a
        };
        self.reevaluate();
        // The token file goes first, before the slow network work below: a crash or a SIGTERM
        // during the terminations must not leave the device paired after a restart. The token
        // stays in memory just long enough to end the server uploads.
        credentials::erase(&self.config.state.dir).map_err(AppError::internal)?;
        let mut report = Unpaired {
            terminated: 0,
            not_terminated: 0,
        };
        let urls = self.store.unfinished_upload_urls()?;
        for (_, url) in &urls {
            match &account {
                Some(a) if self.terminate(url, &a.token).await => report.terminated += 1,
                _ => report.not_terminated += 1,
            }
        }
        self.live().unpair_unfinished = true;
        if let Err(e) = self.finish_unpairing() {
            tracing::error!(error = %e, "unpaired, but the account's data cannot be erased yet: trying again");
            self.store_failed(&e);
            self.resave.notify_one();
        }
        tracing::info!(
            terminated = report.terminated,
            not_terminated = report.not_terminated,
            "unpaired: token, user ID, upload URLs and history erased"
        );
        self.reevaluate();
        Ok(report)
    }

    /// Erases what an unpairing leaves in the database (manual requests, upload URLs,
    /// history, the account's status).
    pub(super) fn finish_unpairing(&self) -> Result<(), crate::store::StoreError> {
        self.store.set_kv(AccountStatus::KEY, None)?;
        self.store.erase_account_data()?;
        if std::mem::take(&mut self.live().unpair_unfinished) {
            tracing::info!("the unpairing is finished");
        }
        Ok(())
    }

    pub(super) async fn terminate(&self, url: &str, token: &Secret) -> bool {
        let ask = self.client.terminate(url, token);
        match tokio::time::timeout(std::time::Duration::from_secs(10), ask).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not terminate an unfinished server upload");
                false
            }
            Err(_) => {
                tracing::warn!("terminating an unfinished server upload timed out");
                false
            }
        }
    }

    /// The server refused the account (401/402): uploads stop until the user pairs again.
    pub fn set_account_status(&self, status: AccountStatus) {
        let v = match &status {
            AccountStatus::Ok => None,
            s => Some(s.as_str()),
        };
        if let Err(e) = self.store.set_kv(AccountStatus::KEY, v) {
            tracing::error!(error = %e, "could not store the account status");
        }
        if let AccountStatus::Unauthorized(m) | AccountStatus::SubscriptionInactive(m) = &status {
            tracing::warn!(reason = %m, "the server refused the account; uploads stop until the app pairs again");
        }
        self.live().account_status = status;
        self.reevaluate();
    }
}
