//! Errors of the contract. Every `Display` text can be shown to a chat user.

/// A message that cannot be read as this version of the contract.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error(
        "The {what} message is version {found}, newer than this DUCKS understands (1). Upgrade DUCKS."
    )]
    NewerVersion { what: &'static str, found: u64 },
    #[error("The {what} message is malformed: {}", sentence(.detail))]
    Malformed { what: &'static str, detail: String },
    #[error(
        "`{0}` is not a job id: use 1 to 40 lowercase letters, digits or '-', starting with a letter or digit."
    )]
    InvalidJobId(String),
}

/// `text` ending in a full stop, without doubling one it has.
fn sentence(text: &str) -> String {
    if text.ends_with('.') {
        text.to_owned()
    } else {
        format!("{text}.")
    }
}
