//! Whether counts are fleet-wide, as the catalogue records it: `serve` brings it in line with
//! its `--redis` and `--fleet-fallback` at start, and the snapshot shell carries it, so a
//! restart that turns fleet mode on or off, or changes the fallback, is a new revision.

use super::db::Db;
use tollgate_core::fleet::{Fallback, FleetSettings};

use super::{query_opt, Tx};
use crate::error::Error;

/// The fleet setting in force: `None` while each gateway counts alone.
pub fn get(conn: &Db<'_>) -> Result<Option<FleetSettings>, Error> {
    let stored = query_opt(
        conn,
        "SELECT fallback FROM fleet_settings WHERE id = 1",
        [],
        |r| r.get::<_, String>(0),
    )?;
    stored
        .map(|fallback| {
            let fallback = fallback
                .parse::<Fallback>()
                .map_err(|e| Error::Internal(format!("stored fleet setting unreadable: {e}")))?;
            Ok(FleetSettings { fallback })
        })
        .transpose()
}

/// Records `wanted` when it differs from what is stored, marking the write as changing what
/// gateways see. Answers whether it changed anything.
pub fn set(tx: &mut Tx<'_>, wanted: Option<FleetSettings>) -> Result<bool, Error> {
    if get(tx)? == wanted {
        return Ok(false);
    }
    match wanted {
        None => tx.execute("DELETE FROM fleet_settings", [])?,
        Some(settings) => tx.execute(
            "INSERT INTO fleet_settings (id, fallback) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET fallback = excluded.fallback",
            [settings.fallback.as_str()],
        )?,
    };
    tx.gateway_changed();
    Ok(true)
}
