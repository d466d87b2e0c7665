//! A mount's options changing while it is mounted (`mount -o remount`):
//! the atime policy, and read-only to read-write and back.

use super::atime::AtimePolicy;
use super::error::{FsError, Result};
use super::{Fs, ItemStore};

impl<S: ItemStore> Fs<S> {
    /// The mount is now read-only or read-write, with this atime policy.
    ///
    /// Going read-only commits everything first (lazytime's atimes
    /// included), as the kernel syncs a filesystem it remounts read-only;
    /// from then on every change fails with EROFS before it touches
    /// anything and nothing commits, as for a mount made read-only from
    /// the start. Going read-write accepts changes again and deletes the
    /// orphans a read-only mount leaves (as mount does). A volume that
    /// went read-only after an error stays so: EROFS.
    pub async fn remount(&mut self, atime: AtimePolicy, read_only: bool) -> Result<()> {
        let was_read_only = self.store.read_only();
        if read_only {
            self.set_atime_policy(atime).await?;
            if !was_read_only {
                self.store.commit().await?;
                self.store.set_read_only(true);
            }
            return Ok(());
        }
        if was_read_only {
            if !self.store.set_read_only(false) {
                return Err(FsError::ReadOnly(
                    "the volume stays read-only after an error".into(),
                ));
            }
            self.delete_orphans().await?;
        }
        self.set_atime_policy(atime).await
    }
}
