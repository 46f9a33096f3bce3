//! Domain replay: executing a journal record again on its user's ledger, in
//! one place for recovery, backups' checks and tools.

use super::records::{AddTransactionsRecord, Command, JournalRecord};
use crate::ledger::{Clock, Executed, Ledger, NewTransaction};

/// Executes one journal record again. It was executed once on the same
/// state, so it must have the same outcome: the same id, or a refusal.
pub fn replay(ledger: &mut Ledger, record: JournalRecord) -> Result<(), ReplayError> {
    replay_record(ledger, record).map_err(ReplayError)
}

/// A journal record whose replay does not give the outcome it recorded: the
/// journal was damaged, forged, or written by another version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplayError(pub String);

/// The clock a record was executed at.
pub fn clock_of(record: &JournalRecord) -> Clock {
    Clock {
        now_ms: record.accepted_at_ms,
        points_validity_ms: (record.points_validity_ms > 0).then_some(record.points_validity_ms),
    }
}

fn replay_record(ledger: &mut Ledger, record: JournalRecord) -> Result<(), String> {
    ledger.advance(clock_of(&record));
    let request = (!record.request_id.is_empty())
        .then_some((record.request_id.as_str(), record.accepted_at_ms));
    let command = record.command.ok_or_else(|| {
        "a record with an unknown command (written by a newer version?)".to_owned()
    })?;
    let command = match command {
        Command::AdvanceClock(_) => return Ok(()),
        Command::AddTransactions(batch) => return replay_batch(ledger, &batch),
        command => command,
    };
    // The command's parameters and the id execution recorded (None: the
    // command assigns no new id).
    let Some((params, recorded_id)) = command.into_request()? else {
        return Err("a batch or clock record read as a single request".to_owned());
    };
    let outcome = ledger.replay(request, params).map(|(id, executed)| match executed {
        Executed::Release(_) => None,
        _ => Some(id),
    });
    match (outcome, record.refused) {
        (Ok(id), false) if id.is_none() || id == recorded_id => Ok(()),
        (Ok(id), false) => {
            Err(format!("replay assigned id {id:?}, the journal recorded id {recorded_id:?}"))
        }
        (Ok(id), true) => {
            Err(format!("the command was refused, but replay accepted it as id {id:?}"))
        }
        (Err(_), true) => Ok(()),
        (Err(error), false) => Err(format!("the ledger refused it: {error}")),
    }
}

/// Executes a batch of transactions again; it must assign the ids recorded.
fn replay_batch(ledger: &mut Ledger, batch: &AddTransactionsRecord) -> Result<(), String> {
    let entries = batch
        .transactions
        .iter()
        .map(|add| {
            let timestamp = add.timestamp()?;
            Ok(NewTransaction { payer: &add.payer, points: add.points, timestamp })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let recorded: Vec<u64> = batch.transactions.iter().map(|add| add.transaction_id).collect();
    let ids = ledger
        .add_transactions(&entries)
        .map_err(|error| format!("the ledger refused the batch: {error}"))?
        .iter()
        .map(|transaction| transaction.id)
        .collect::<Vec<_>>();
    if ids != recorded {
        return Err(format!("replay assigned ids {ids:?}, the journal recorded {recorded:?}"));
    }
    Ok(())
}
