//! `ducks dev`: the whole stack on this machine until Ctrl-C.

use crate::dev::Stack;
use crate::settings::Settings;

pub async fn run(settings: Settings) -> Result<(), crate::Error> {
    let stack = Stack::start(settings).await?;
    println!("DUCKS is running on this machine.\n\n{}", stack.describe());
    println!(
        "Ctrl-C stops the stack. Jobs still running after a few seconds are left to the next \
         `ducks dev`, which takes them over."
    );
    crate::signals::terminated().await;
    eprintln!("Stopping…");
    stack.stop().await
}
