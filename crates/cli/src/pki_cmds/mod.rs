//! `influxion ca …`, `influxion profiles …`, `influxion cert …` and `influxion
//! provision`: the device CA from the command line, one module per resource, and the
//! bulk engine of production lines.

mod bulk;
mod ca;
mod cert;
mod files;
mod profiles;

pub use bulk::{provision, BulkArgs, ProvisionArgs};
pub use ca::{ca, CaCommand, CaCreateArgs};
pub use cert::{cert, CertCommand};
pub use profiles::{profiles, ProfileArgs, ProfilesCommand};
