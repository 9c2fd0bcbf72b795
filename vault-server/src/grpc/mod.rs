//! gRPC handlers: decode and canonicalise, authorise, call the vault, encode the reply.

mod listing;
mod page_token;
mod status;

/// The listings' request decoding, for the fuzz targets (not an API).
#[doc(hidden)]
pub use listing::{audit_query, credentials_query, unused_query};
pub use status::{ERROR_DOMAIN, public_budget_exhausted};

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{Instrument as _, instrument};
use zeroize::Zeroize as _;

use crate::auth::{AuthError, caller};
use crate::ids::{ClientId, Mailbox, RequestId};
use crate::metrics::Metrics;
use crate::proto::{self, auth_code_vault_server::AuthCodeVault};
use crate::secret::AuthCode;
use crate::vault::{Answer, Vault, VaultError};

/// The `vault.v1.AuthCodeVault` service.
pub struct VaultService {
    vault: Arc<Vault>,
    metrics: Arc<Metrics>,
}

impl VaultService {
    pub fn new(vault: Arc<Vault>, metrics: Arc<Metrics>) -> Self {
        Self { vault, metrics }
    }

    /// A role check's refusal, counted with the authentication failures.
    fn permit(&self, check: Result<(), AuthError>) -> Result<(), Status> {
        check.map_err(|e| {
            self.metrics.observe_auth_failure(e.reason());
            Status::from(e)
        })
    }
}

/// The request's pair, canonical; the fields are taken, not copied.
fn pair(mailbox: &mut String, client: &mut String) -> Result<(Mailbox, ClientId), VaultError> {
    Ok((Mailbox::parse(std::mem::take(mailbox))?, ClientId::parse(std::mem::take(client))?))
}

/// Adds the canonical pair to the RPC's span (safe fields only).
fn record_pair(mailbox: &Mailbox, client: &ClientId) {
    tracing::Span::current().record("mailbox", mailbox.as_str()).record("client", client.as_str());
}

/// Runs a write to its end even if the caller goes away (a deadline, a reset stream): the pair's
/// lock is then held until the commit is done, so a retry with the same request id finds it.
async fn to_completion<T: Send + 'static>(
    write: impl Future<Output = Result<T, VaultError>> + Send + 'static,
) -> Result<T, VaultError> {
    tokio::spawn(write.in_current_span())
        .await
        .map_err(|e| VaultError::Internal(format!("a write task failed: {e}")))?
}

/// A write's response: made now by `fresh`, or the one remembered for its request id, marked
/// with the `vault-replayed: true` header.
fn respond<T, M: prost::Message + Default>(
    answer: Answer<T>,
    fresh: impl FnOnce(T) -> M,
) -> Result<Response<M>, Status> {
    match answer {
        Answer::Done(t) => Ok(Response::new(fresh(t))),
        Answer::Replayed(bytes) => {
            let message = M::decode(bytes.as_slice()).map_err(|_| VaultError::DataLoss)?;
            let mut response = Response::new(message);
            response.metadata_mut().insert("vault-replayed", tonic::metadata::MetadataValue::from_static("true"));
            Ok(response)
        }
    }
}

#[tonic::async_trait]
impl AuthCodeVault for VaultService {
    #[instrument(skip_all, fields(rpc = "Bind", mailbox, client))]
    async fn bind(&self, request: Request<proto::BindRequest>) -> Result<Response<proto::BindResponse>, Status> {
        let who = caller(&request)?;
        self.permit(who.require_admin("Bind"))?;
        let mut req = request.into_inner();
        let code = AuthCode::new(&req.auth_code);
        // The message's copy is zeroed at once; only the vault's own (zeroed on drop) remains.
        req.auth_code.zeroize();
        let (mailbox, client) = pair(&mut req.mailbox, &mut req.client)?;
        record_pair(&mailbox, &client);
        let request_id = RequestId::parse(&req.request_id).map_err(VaultError::from)?;
        drop(req);
        let vault = self.vault.clone();
        let answer = to_completion(async move { vault.bind(&who, mailbox, client, code, request_id).await }).await?;
        respond(answer, |(row, probe)| {
            tracing::info!("bound");
            proto::bind_response(&row, &probe)
        })
    }

    #[instrument(skip_all, fields(rpc = "Rotate", mailbox, client))]
    async fn rotate(&self, request: Request<proto::RotateRequest>) -> Result<Response<proto::RotateResponse>, Status> {
        let who = caller(&request)?;
        self.permit(who.require_admin("Rotate"))?;
        let mut req = request.into_inner();
        let code = AuthCode::new(&req.new_auth_code);
        req.new_auth_code.zeroize();
        let (mailbox, client) = pair(&mut req.mailbox, &mut req.client)?;
        record_pair(&mailbox, &client);
        let request_id = RequestId::parse(&req.request_id).map_err(VaultError::from)?;
        let expected = (req.expected_version != 0).then_some(req.expected_version);
        drop(req);
        let vault = self.vault.clone();
        let answer =
            to_completion(async move { vault.rotate(&who, mailbox, client, code, expected, request_id).await }).await?;
        respond(answer, |r| {
            tracing::info!(version = r.row.version, "rotated");
            proto::rotate_response(&r.row, &r.probe, r.previous_code_probe.as_ref())
        })
    }

    #[instrument(skip_all, fields(rpc = "Revoke", mailbox, client))]
    async fn revoke(&self, request: Request<proto::RevokeRequest>) -> Result<Response<proto::RevokeResponse>, Status> {
        let who = caller(&request)?;
        self.permit(who.require_admin("Revoke"))?;
        let mut req = request.into_inner();
        let (mailbox, client) = pair(&mut req.mailbox, &mut req.client)?;
        record_pair(&mailbox, &client);
        let request_id = RequestId::parse(&req.request_id).map_err(VaultError::from)?;
        let vault = self.vault.clone();
        let answer =
            to_completion(async move { vault.revoke(&who, mailbox, client, &req.reason, request_id).await }).await?;
        respond(answer, |r| {
            tracing::info!("revoked");
            proto::revoke_response(&r.row, r.probe.as_ref())
        })
    }

    #[instrument(skip_all, fields(rpc = "Verify", mailbox, client))]
    async fn verify(&self, request: Request<proto::VerifyRequest>) -> Result<Response<proto::VerifyResponse>, Status> {
        let who = caller(&request)?;
        self.permit(who.require_admin("Verify"))?;
        let mut req = request.into_inner();
        let (mailbox, client) = pair(&mut req.mailbox, &mut req.client)?;
        record_pair(&mailbox, &client);
        let (row, probe) = self.vault.verify(&who, mailbox, client).await?;
        Ok(Response::new(proto::VerifyResponse { credential: Some(row.into()), probe: Some(probe.into()) }))
    }

    // The hot path: its span is DEBUG, so at the default INFO level it costs nothing.
    #[instrument(level = "debug", skip_all, fields(rpc = "Reveal", mailbox, client))]
    async fn reveal(&self, request: Request<proto::RevealRequest>) -> Result<Response<proto::RevealResponse>, Status> {
        let who = caller(&request)?;
        let mut req = request.into_inner();
        let (mailbox, client) = pair(&mut req.mailbox, &mut req.client)?;
        record_pair(&mailbox, &client);
        self.permit(who.require_client("Reveal", &client))?;
        let revealed = self.vault.reveal(&who, &mailbox, &client).await?;
        let p = &revealed.provider;
        Ok(Response::new(proto::RevealResponse {
            auth_code: revealed.code.expose().to_owned(),
            version: revealed.version,
            imap_host: p.imap.host.clone(),
            imap_port: p.imap.port.into(),
            smtp_host: p.smtp.host.clone(),
            smtp_port: p.smtp.port.into(),
        }))
    }

    #[instrument(skip_all, fields(rpc = "GetCredential", mailbox, client))]
    async fn get_credential(
        &self,
        request: Request<proto::GetCredentialRequest>,
    ) -> Result<Response<proto::Credential>, Status> {
        let who = caller(&request)?;
        let mut req = request.into_inner();
        let (mailbox, client) = pair(&mut req.mailbox, &mut req.client)?;
        record_pair(&mailbox, &client);
        self.permit(who.require_admin_or_client("GetCredential", &client))?;
        Ok(Response::new(std::sync::Arc::unwrap_or_clone(self.vault.get(&mailbox, &client).await?).into()))
    }

    #[instrument(skip_all, fields(rpc = "ListCredentials"))]
    async fn list_credentials(
        &self,
        request: Request<proto::ListCredentialsRequest>,
    ) -> Result<Response<proto::ListCredentialsResponse>, Status> {
        self.permit(caller(&request)?.require_admin("ListCredentials"))?;
        Ok(Response::new(listing::credentials(&self.vault, request.into_inner()).await?))
    }

    #[instrument(skip_all, fields(rpc = "ListUnusedClients"))]
    async fn list_unused_clients(
        &self,
        request: Request<proto::ListUnusedClientsRequest>,
    ) -> Result<Response<proto::ListUnusedClientsResponse>, Status> {
        self.permit(caller(&request)?.require_admin("ListUnusedClients"))?;
        Ok(Response::new(listing::unused(&self.vault, request.into_inner()).await?))
    }

    #[instrument(skip_all, fields(rpc = "ListAuditEvents"))]
    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        self.permit(caller(&request)?.require_admin("ListAuditEvents"))?;
        Ok(Response::new(listing::audit(&self.vault, request.into_inner()).await?))
    }

    #[instrument(skip_all, fields(rpc = "RotateDataKey"))]
    async fn rotate_data_key(
        &self,
        request: Request<proto::RotateDataKeyRequest>,
    ) -> Result<Response<proto::RotateDataKeyResponse>, Status> {
        let who = caller(&request)?;
        self.permit(who.require_admin("RotateDataKey"))?;
        let r = self.vault.rotate_data_key(who).await?;
        Ok(Response::new(proto::RotateDataKeyResponse {
            active_key_id: r.active.key_id,
            active_key_created_at: Some(proto::timestamp(r.active.created_at)),
            retired_key_ids: r.retired,
            codes_resealed: r.codes_resealed,
            tokens_rekeyed: r.tokens_rekeyed,
            unreadable_codes: r.unreadable_codes,
        }))
    }
}
