//! `mutebridge schema`: the JSON Schema of each contract mutebridge
//! publishes, for those who read its topics.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

/// `mutebridge schema [CONTRACT]`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    #[arg(value_enum, default_value_t = Contract::Event)]
    contract: Contract,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Contract {
    /// `mutebridge.event/v1`, the records of the event topic.
    Event,
    /// `mutebridge.state/v1`, the group states in the state topic.
    State,
    /// `mutebridge.applied/v1`, what each target applied, in the state topic.
    Applied,
}

/// Prints the schema.
pub fn run(args: SchemaArgs) -> anyhow::Result<ExitCode> {
    print!(
        "{}",
        match args.contract {
            Contract::Event => crate::event::json_schema(),
            Contract::State => crate::state::json_schema(),
            Contract::Applied => crate::state::applied::json_schema(),
        }
    );
    Ok(ExitCode::SUCCESS)
}
