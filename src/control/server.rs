//! TEMPORARY stub until the control branch lands.
use std::sync::Arc;

use crate::app::App;
use crate::config::Config;

pub fn bind(_c: &Config) -> std::io::Result<()> {
    Ok(())
}

pub async fn serve(_l: (), app: Arc<App>) -> std::io::Result<()> {
    app.shutdown.cancelled().await;
    Ok(())
}
