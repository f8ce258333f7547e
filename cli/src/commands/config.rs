//! `ducks config`: the settings after every layer, to check what a deployment will use.

use crate::settings::Settings;

pub fn run(settings: &Settings) -> Result<(), crate::Error> {
    println!("{settings:#?}");
    Ok(())
}
