//! `token create | list | revoke`: run against the data dir or the PostgreSQL database, also
//! while servers run (they see changes within a second).

use std::sync::Arc;

use super::database::Database;
use super::{RunError, emit, note, now, read_passphrase};
use crate::auth::{Role, Tokens};
use crate::cli::{TokenArgs, TokenCommand};
use crate::ids::ClientId;
use crate::secret::Passphrase;
use crate::store::StoreError;

fn runtime() -> Result<tokio::runtime::Runtime, RunError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(RunError::Runtime)
}

/// A field of a token row as the terminal may show it: a row written by hand can hold escape
/// sequences that would repaint the line (an `active` over its real state, say).
fn shown(field: &str) -> String {
    field.escape_debug().to_string()
}

fn millis_to_text(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| format!("{}", ms / 1000))
}

/// A token id as given to `token revoke`, checked before any use. The argument is never echoed:
/// it may be the token itself, pasted by mistake (then its id, which is not secret, is named).
fn token_id_arg(arg: &str) -> Result<String, String> {
    let arg = arg.trim();
    if let Some(hex) = arg.strip_prefix("tk_")
        && hex.len() == 12
        && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Ok(arg.to_owned());
    }
    match crate::auth::Token::parse(arg) {
        Some(token) => {
            Err(format!("that is a token itself, not its id (not printed here); revoke it by its id: {}", token.id()))
        }
        None => Err("not a token id: ids are tk_ and 12 hex digits, as `token list` shows them".into()),
    }
}

/// The role `--admin` or `--client ID` asks for.
fn role_of(admin: bool, client: Option<String>) -> Result<Role, RunError> {
    match (admin, client) {
        (true, None) => Ok(Role::Admin),
        (false, Some(id)) => ClientId::parse(&id)
            .map(Role::Client)
            .map_err(|e| RunError::Usage(format!("invalid --client: {}", e.reason))),
        _ => Err(RunError::Usage("give exactly one of --admin or --client ID".into())),
    }
}

pub fn run(args: TokenArgs, env_passphrase: Option<Passphrase>) -> Result<(), RunError> {
    match args.command {
        TokenCommand::Create { data_dir, database, passphrase, admin, client } => {
            let database = Database::from_args(&database, data_dir.as_deref())?;
            let role = role_of(admin, client)?;
            // The token is shown once, on stdout: minted only if it can be.
            super::require_stdout()?;
            // Minting needs the keyring (token rows are MAC'd under a key derived from it).
            let passphrase = read_passphrase(&passphrase, env_passphrase)?;
            let (token, id) = runtime()?.block_on(async {
                let (store, keyring, _) = database.unlock(&passphrase).await?;
                let tokens = Tokens::new(store, Arc::new(crate::crypto::LiveKeyring::new(keyring)));
                Ok::<_, RunError>(tokens.mint(&role, now()).await?)
            })?;
            note(format_args!("created token {id} ({role}); it is shown once, below"));
            if let Err(e) = emit(token.expose()) {
                // Nobody saw it: a token nobody holds must not stay valid.
                let undone = runtime()?.block_on(async {
                    database.open().await?.revoke_token(id.clone(), now()).await.map_err(RunError::from)
                });
                let what = match undone {
                    Ok(()) => format!("token {id} was revoked again"),
                    Err(_) => format!(
                        "token {id} stays valid: revoke it with `vault-server token revoke {id}` and the same \
                         --data-dir or --database"
                    ),
                };
                return Err(RunError::Token(format!("{e}; {what}")));
            }
            Ok(())
        }
        TokenCommand::List { data_dir, database, passphrase } => {
            let database = Database::from_args(&database, data_dir.as_deref())?;
            // Only the keyring tells a minted row from one written into the database by hand.
            let given = passphrase.passphrase_file.is_some() || env_passphrase.is_some();
            let passphrase = given.then(|| read_passphrase(&passphrase, env_passphrase)).transpose()?;
            let (rows, keyring) = runtime()?.block_on(async {
                let (store, keyring) = match &passphrase {
                    Some(p) => database.unlock(p).await.map(|(store, keyring, _)| (store, Some(keyring)))?,
                    None => (database.open().await?, None),
                };
                Ok::<_, RunError>((store.tokens().await?, keyring))
            })?;
            if keyring.is_none() {
                note(format_args!(
                    "note: MACs not checked (no passphrase: pass --passphrase-file FILE or set VAULT_PASSPHRASE), so \
                     a row written into the database by hand cannot be told from a minted one"
                ));
            }
            emit(format_args!("{:<16} {:<28} {:>12} {:>12} STATE", "ID", "ROLE", "CREATED", "LAST USED"))?;
            for read in rows {
                match read {
                    Ok(t) => {
                        // Revoking destroys the MAC; a row without one is never honoured.
                        let state = match &keyring {
                            _ if t.revoked_at.is_some() || t.mac.is_empty() => "revoked",
                            None => "unchecked",
                            Some(ring) if crate::auth::authentic(ring, &t) => "active",
                            Some(_) => {
                                note(format_args!(
                                    "warning: token row {} has no valid MAC; the server refuses it",
                                    shown(&t.id)
                                ));
                                "unreadable"
                            }
                        };
                        emit(format_args!(
                            "{:<16} {:<28} {:>12} {:>12} {state}",
                            shown(&t.id),
                            shown(&t.role),
                            millis_to_text(Some(t.created_at)),
                            millis_to_text(t.last_used_at)
                        ))?;
                    }
                    Err(bad) => {
                        note(format_args!(
                            "warning: token row {} is unreadable ({}); the server refuses it",
                            shown(&bad.id),
                            bad.reason
                        ));
                        emit(format_args!("{:<16} {:<28} {:>12} {:>12} unreadable", shown(&bad.id), "-", "-", "-"))?;
                    }
                }
            }
            Ok(())
        }
        TokenCommand::Revoke { data_dir, database, id } => {
            let id = token_id_arg(&id).map_err(RunError::Usage)?;
            let database = Database::from_args(&database, data_dir.as_deref())?;
            let revoked = runtime()?
                .block_on(async { Ok::<_, RunError>(database.open().await?.revoke_token(id.clone(), now()).await) })?;
            match revoked {
                Ok(()) => {
                    note(format_args!("revoked token {id}; a running server refuses it within a second"));
                    Ok(())
                }
                Err(StoreError::NotFound) => Err(RunError::Token(format!("no token with id {id}"))),
                Err(StoreError::Revoked) => Err(RunError::Token(format!("token {id} is already revoked"))),
                Err(e) => Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pasted_token_is_named_by_its_id_and_never_echoed() {
        let token = crate::auth::Token::generate();
        let err = token_id_arg(token.expose()).unwrap_err();
        assert!(!err.contains(token.expose()) && !err.contains(&token.expose()[17..]), "{err}");
        assert!(err.ends_with(&token.id()), "{err}");
        let err = token_id_arg(&token.expose()[..40]).unwrap_err();
        assert!(!err.contains(&token.expose()[4..40]), "{err}");
        assert_eq!(token_id_arg(&format!(" {} ", token.id())).unwrap(), token.id());
        assert!(token_id_arg("tk_0123456789AB").is_err());
    }
}
