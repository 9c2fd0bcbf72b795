//! Changing the master passphrase: the data keys are re-wrapped, the codes are not touched.

use std::path::Path;

use super::{DataDirError, unlock};
use crate::crypto::{Salt, derive_kek};
use crate::secret::Passphrase;
use crate::store::{StoreError, UnlockMaterial};

/// Re-wraps the data keys under `new` with a fresh salt, in one transaction: a crash leaves
/// either the old or the new passphrase working, never neither. Codes are not touched, and a
/// running server (which holds the keys already) is not disturbed.
pub fn change_passphrase(dir: &Path, current: &Passphrase, new: &Passphrase) -> Result<(), DataDirError> {
    if super::too_short(new) {
        return Err(DataDirError::WeakPassphrase);
    }
    if new.expose() == current.expose() {
        return Err(DataDirError::SamePassphrase);
    }
    let (store, keyring) = unlock(dir, current)?;
    let store_err = |e| DataDirError::Store(dir.to_owned(), e);
    let before = store.sync().unlock_material().map_err(store_err)?;
    let salt = Salt::random();
    // Parameters an operator raised stay raised.
    let params = before.params;
    let kek = derive_kek(new, &salt, params).map_err(|e| DataDirError::Crypto(dir.to_owned(), e))?;
    let material = UnlockMaterial { salt, params, keys: keyring.wrap_all(&kek) };
    store.sync().replace_unlock_material(&before, &material).map_err(|e| match e {
        StoreError::Conflict => DataDirError::ChangedMeanwhile(dir.to_owned()),
        e => DataDirError::Store(dir.to_owned(), e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::init;

    #[test]
    fn two_passphrase_changes_at_once_cannot_both_win() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let first = Passphrase::new("correct horse battery");
        init(&dir, &first, 0).unwrap();
        let (store, ring) = unlock(&dir, &first).unwrap();
        let before = store.sync().unlock_material().unwrap();
        // Another admin changes it first.
        change_passphrase(&dir, &first, &Passphrase::new("the other admin's one")).unwrap();
        // This change was prepared against the old wrapping: it must fail, not overwrite.
        let salt = Salt::random();
        let kek = derive_kek(&Passphrase::new("mine, lost silently?"), &salt, before.params).unwrap();
        let material = UnlockMaterial { salt, params: before.params, keys: ring.wrap_all(&kek) };
        assert!(matches!(store.sync().replace_unlock_material(&before, &material), Err(StoreError::Conflict)));
        assert!(unlock(&dir, &Passphrase::new("the other admin's one")).is_ok());
    }

    #[test]
    fn a_key_added_by_a_rotation_meanwhile_makes_the_change_fail_not_strand_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let pass = Passphrase::new("correct horse battery");
        init(&dir, &pass, 0).unwrap();
        let (store, kek_ring, kek) = crate::datadir::unlock_keeping_kek(&dir, &pass).unwrap();
        let before = store.sync().unlock_material().unwrap();
        // The change is prepared against key 1 alone ...
        let salt = Salt::random();
        let new_kek = derive_kek(&Passphrase::new("the next passphrase"), &salt, before.params).unwrap();
        let material = UnlockMaterial { salt, params: before.params, keys: kek_ring.wrap_all(&new_kek) };
        // ... while a running server's rotation stores key 2 under the current passphrase.
        let (_, wrapped) = kek_ring.with_new_key(&kek.key);
        store.sync().add_data_key(&kek.salt, &wrapped, 1).unwrap();
        assert!(matches!(store.sync().replace_unlock_material(&before, &material), Err(StoreError::Conflict)));
        let (_, ring) = unlock(&dir, &pass).unwrap();
        assert_eq!(ring.key_ids().collect::<Vec<_>>(), [1, 2], "the current passphrase still opens both keys");
    }
}
