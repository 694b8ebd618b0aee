//! (placeholder: main_loop)
use crate::config::Config;
use crate::error::Error;
pub fn run(_config: Config) -> Result<(), Error> {
    Ok(())
}
