//! Every RPC once, against a running vault (the README's playground, for one): Bind, Reveal as
//! the client, Get, List, Verify, Rotate, the review of unused clients, the audit trail, Revoke
//! and RotateDataKey. Tokens come from the environment and the two codes from stdin, one line
//! each, never from the command line.
//!
//! ```sh
//! export VAULT_ADDR=http://127.0.0.1:50051 ADMIN_TOKEN=avt_... CLIENT_TOKEN=avt_...  # a --client sender token
//! read -rsp 'auth code: ' CODE; echo; read -rsp 'new auth code: ' NEW; echo
//! printf '%s\n%s\n' "$CODE" "$NEW" | cargo run --example lifecycle -- bob@sina.com sender
//! ```

use std::io::BufRead as _;

use vault_client::{
    AuditFilter, ConnectOptions, CredentialFilter, Error, ExposeSecret, SecretString, UnusedFilter, VaultClient,
};

fn token(name: &str) -> Result<ConnectOptions, String> {
    let token = std::env::var(name).map_err(|_| format!("set {name}"))?;
    Ok(ConnectOptions::with_token(SecretString::from(token)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: lifecycle MAILBOX CLIENT (the code and the new code on stdin, one per line)";
    let (mailbox, client) = (args.next().ok_or(usage)?, args.next().ok_or(usage)?);
    let mut lines = std::io::stdin().lock().lines();
    let mut code = || lines.next().transpose().map(|l| l.map(SecretString::from)).map_err(|e| e.to_string());
    let (first, second) = (code()?.ok_or(usage)?, code()?.ok_or(usage)?);
    let endpoint = std::env::var("VAULT_ADDR").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let mut admin = VaultClient::connect(endpoint.clone(), token("ADMIN_TOKEN")?).await?;

    // Bind: the provider must accept the code first.
    let bound = match admin.bind(&mailbox, &client, first).await {
        Ok(bound) => bound,
        Err(Error::ProbeRejected { hint, server_response, .. }) => {
            return Err(format!("the provider refused the code ({server_response}): {hint}").into());
        }
        Err(e) => return Err(e.into()),
    };
    println!("bind: version {}, {}", bound.credential.version, bound.probe.server_response);

    // Reveal, with the client's own token: what a sync worker does at run time.
    let mut worker = VaultClient::connect(endpoint, token("CLIENT_TOKEN")?).await?;
    let revealed = worker.reveal(&mailbox, &client).await?;
    let length = revealed.code.expose_secret().len();
    println!("reveal: log in to {}:{} with the {length}-character code", revealed.imap_host, revealed.imap_port);

    let credential = admin.get(&mailbox, &client).await?;
    println!("get: {:?}, version {}", credential.state, credential.version);
    let page = admin.list(&CredentialFilter { mailbox: mailbox.clone(), ..Default::default() }, "").await?;
    println!("list: {} binding(s) of {mailbox}", page.items.len());

    let verified = admin.verify(&mailbox, &client).await?;
    println!("verify: {:?}", verified.probe.outcome);

    let rotated = admin.rotate(&mailbox, &client, second, credential.version).await?;
    let previous = rotated.previous_code_probe.map_or_else(|| "not probed".into(), |p| p.hint);
    println!("rotate: version {}; the old code: {previous}", rotated.credential.version);

    let unused = admin.unused_all(&UnusedFilter::default()).await?;
    println!("review: {} client(s) unused for 90 days", unused.len());
    let filter = AuditFilter { mailbox: mailbox.clone(), ..Default::default() };
    for event in admin.audit_all(&filter, 10).await? {
        println!(
            "audit: {} {} by {}: {} {:?}",
            event.id, event.rpc, event.caller_role, event.outcome, event.probe_outcome
        );
    }

    let revoked = admin.revoke(&mailbox, &client, "example done").await?;
    println!("revoke: {:?} at {:?}", revoked.credential.state, revoked.credential.revoked_at);
    let rotated = admin.rotate_data_key().await?;
    println!("rotate data key: key {} now, {} code(s) re-sealed", rotated.active_key_id, rotated.codes_resealed);
    Ok(())
}
