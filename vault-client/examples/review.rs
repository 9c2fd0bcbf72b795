//! Binds a code, reveals it as the client, and lists the clients nobody used for a quarter.
//!
//! ```sh
//! VAULT_ADMIN_TOKEN=avt_... VAULT_CLIENT_TOKEN=avt_... VAULT_AUTH_CODE=abcd1234efgh5678 \
//!   cargo run -p vault-client --example review -- http://127.0.0.1:50051 alice@sina.com sender
//! ```

use vault_client::{ConnectOptions, Error, ExposeSecret, SecretString, VaultClient};

fn env_secret(name: &str) -> Result<SecretString, String> {
    std::env::var(name).map(SecretString::from).map_err(|_| format!("set {name}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: review ENDPOINT MAILBOX CLIENT";
    let (endpoint, mailbox, client) = (args.next().ok_or(usage)?, args.next().ok_or(usage)?, args.next().ok_or(usage)?);

    let mut admin =
        VaultClient::connect(endpoint.clone(), ConnectOptions::with_token(env_secret("VAULT_ADMIN_TOKEN")?)).await?;
    match admin.bind(&mailbox, &client, env_secret("VAULT_AUTH_CODE")?).await {
        Ok(r) => println!("bound {mailbox}/{client}: probe {:?}", r.probe.map(|p| p.outcome())),
        Err(Error::AlreadyBound) => println!("{mailbox}/{client} is already bound"),
        Err(Error::ProbeRejected { hint, .. }) => return Err(format!("the provider refused the code: {hint}").into()),
        Err(e) => return Err(e.into()),
    }

    let mut worker =
        VaultClient::connect(endpoint, ConnectOptions::with_token(env_secret("VAULT_CLIENT_TOKEN")?)).await?;
    let revealed = worker.reveal(&mailbox, &client).await?;
    println!(
        "the client logs in to {}:{} with a {}-character code (version {})",
        revealed.imap_host,
        revealed.imap_port,
        revealed.code.expose_secret().len(),
        revealed.version
    );

    let mut token = String::new();
    loop {
        let page = admin.list_unused(None, "", &token).await?;
        for c in &page.clients {
            let last = c.last_used_at.as_ref().map_or_else(|| "never".to_owned(), |t| format!("{}", t.seconds));
            println!("unused for 90 days: {} {} (last used: {last})", c.mailbox, c.client);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok(())
}
