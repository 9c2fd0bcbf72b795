//! The format of the seals: legacy rows (AAD format 1, no generation) are re-sealed at start.

use std::path::Path;

use super::DataDirError;
use crate::crypto::Keyring;
use crate::store::SqliteStore;

/// Re-seals every active code still sealed without a generation (AAD format 1, before
/// migration 0003) with one, so that afterwards a row without a generation is refused as
/// tampered, and an old ciphertext cannot be replayed through the legacy format. Runs at start,
/// before serving. Returns how many rows were re-sealed.
pub fn upgrade_seals(dir: &Path, store: &SqliteStore, keyring: &Keyring) -> Result<usize, DataDirError> {
    let db = store.sync();
    let store_err = |e| DataDirError::Store(dir.to_owned(), e);
    let mut done = 0;
    let mut refused = std::collections::HashSet::new();
    loop {
        let rows = db.legacy_sealed(refused.len() + 200).map_err(store_err)?;
        let todo: Vec<_> = rows.iter().filter(|r| !refused.contains(&(r.mailbox.clone(), r.client.clone()))).collect();
        if todo.is_empty() {
            break;
        }
        for row in todo {
            let Some(code) = &row.code else { continue };
            let opened = keyring.open_code(
                code.key_id,
                &row.mailbox,
                &row.client,
                row.version,
                None,
                &code.sealed.nonce,
                &code.sealed.ciphertext,
            );
            let Ok(plain) = opened else {
                tracing::error!(mailbox = %row.mailbox, client = %row.client, "a legacy seal does not open (tampered?); left as it is, Reveal answers DATA_LOSS");
                refused.insert((row.mailbox.clone(), row.client.clone()));
                continue;
            };
            let (key_id, generation, sealed) = keyring.seal_code(&row.mailbox, &row.client, row.version, &plain);
            let reseal = crate::store::Reseal {
                mailbox: row.mailbox.clone(),
                client: row.client.clone(),
                version: row.version,
                old_key_id: code.key_id,
                old_ciphertext: code.sealed.ciphertext.clone(),
                code: crate::store::StoredCode { key_id, generation: Some(generation), sealed },
            };
            done += db.reseal(&[reseal]).map_err(store_err)?;
        }
    }
    if done > 0 {
        db.shred_wal();
        tracing::info!(rows = done, "re-sealed codes from AAD format 1 to format 2 (with a generation)");
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::{init, unlock};
    use crate::secret::Passphrase;

    #[test]
    fn legacy_seals_are_upgraded_at_start_and_a_broken_one_is_left_alone() {
        use crate::ids::{ClientId, Mailbox};
        use crate::store::{NewBinding, StoredCode};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let pass = Passphrase::new("correct horse battery");
        init(&dir, &pass, 0).unwrap();
        let (store, ring) = unlock(&dir, &pass).unwrap();
        let db = store.sync();
        let audit = crate::store::contract::event("Bind", "", "", 1);
        let legacy = |mailbox: &str, sealed: crate::crypto::Sealed, key_id| NewBinding {
            mailbox: Mailbox::parse(mailbox).unwrap(),
            client: ClientId::parse("sender").unwrap(),
            provider: "sina".into(),
            code: StoredCode { key_id, generation: None, sealed },
            now: 1,
            probe_outcome: crate::outcome::ProbeOutcome::Accepted,
        };
        let (kid, old) = ring.seal_code_legacy("a@sina.com", "sender", 1, b"legacycode000001");
        db.bind(&legacy("a@sina.com", old.clone(), kid), &audit, None).unwrap();
        let (kid, mut broken) = ring.seal_code_legacy("b@sina.com", "sender", 1, b"legacycode000002");
        broken.ciphertext[0] ^= 1;
        db.bind(&legacy("b@sina.com", broken, kid), &audit, None).unwrap();

        assert_eq!(upgrade_seals(&dir, &store, &ring).unwrap(), 1);
        let row = db.get("a@sina.com", "sender").unwrap();
        let code = row.code.as_ref().unwrap();
        let generation = code.generation.expect("re-sealed with a generation");
        let plain = ring.open_code(
            code.key_id,
            "a@sina.com",
            "sender",
            1,
            Some(&generation),
            &code.sealed.nonce,
            &code.sealed.ciphertext,
        );
        assert_eq!(plain.unwrap().as_slice(), b"legacycode000001");
        assert_ne!(code.sealed.nonce, old.nonce, "a new seal, not the old one relabelled");
        // The broken row is left (Reveal answers DATA_LOSS for it); a second pass changes nothing.
        assert!(db.get("b@sina.com", "sender").unwrap().code.as_ref().unwrap().generation.is_none());
        assert_eq!(upgrade_seals(&dir, &store, &ring).unwrap(), 0);
    }
}
