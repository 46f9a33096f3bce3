//! Domain replay: executing a journal record again on its user's ledger, in
//! one place for recovery, backups' checks and tools.

use super::records::{Command, JournalRecord};
use crate::ledger::{Ledger, NewTransaction};

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

fn replay_record(ledger: &mut Ledger, record: JournalRecord) -> Result<(), String> {
    let request = (!record.request_id.is_empty())
        .then_some((record.request_id.as_str(), record.accepted_at_ms));
    let (outcome, recorded_id) = match record.command {
        Some(Command::AddTransaction(add)) => {
            let timestamp = add.timestamp()?;
            let result = ledger.replay_add_transaction(request, &add.payer, add.points, timestamp);
            (result.map(|transaction| transaction.id), add.transaction_id)
        }
        Some(Command::Spend(spend)) => {
            (ledger.replay_spend(request, spend.points).map(|spend| spend.id), spend.spend_id)
        }
        Some(Command::AddTransactions(batch)) => {
            let entries = batch
                .transactions
                .iter()
                .map(|add| {
                    let timestamp = add.timestamp()?;
                    Ok(NewTransaction { payer: &add.payer, points: add.points, timestamp })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let recorded: Vec<u64> =
                batch.transactions.iter().map(|add| add.transaction_id).collect();
            let ids = ledger
                .add_transactions(&entries)
                .map_err(|error| format!("the ledger refused the batch: {error}"))?
                .iter()
                .map(|transaction| transaction.id)
                .collect::<Vec<_>>();
            if ids != recorded {
                return Err(format!(
                    "replay assigned ids {ids:?}, the journal recorded {recorded:?}"
                ));
            }
            return Ok(());
        }
        None => {
            return Err("a record with an unknown command (written by a newer version?)".to_owned());
        }
    };
    match (outcome, record.refused) {
        (Ok(id), false) if id == recorded_id => Ok(()),
        (Ok(id), false) => {
            Err(format!("replay assigned id {id}, the journal recorded id {recorded_id}"))
        }
        (Ok(id), true) => {
            Err(format!("the command was refused, but replay accepted it as id {id}"))
        }
        (Err(_), true) => Ok(()),
        (Err(error), false) => Err(format!("the ledger refused it: {error}")),
    }
}
