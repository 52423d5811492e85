//! `shoal wf`: publish, read, list and delete workflow definitions. `apply`
//! validates the file locally first (the same validation the node runs), so
//! a mistake is reported with its path before anything is sent.

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;
use shoal_client::Method;

use super::client::ClientArgs;

#[derive(Subcommand, Debug)]
pub enum WfCommand {
    /// Publish a definition (YAML or JSON, CNCF Serverless Workflow DSL 1.0)
    /// under the namespace, name and version its `document` names. A version
    /// is immutable: applying the same file again changes nothing.
    Apply {
        /// The definition file.
        file: std::path::PathBuf,
    },
    /// Print a definition as JSON: NAMESPACE/NAME/VERSION.
    Get { id: String },
    /// List definitions, optionally of one namespace (and name).
    Ls {
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete a definition version: NAMESPACE/NAME/VERSION.
    Delete { id: String },
}

fn definition_path(namespace: &str, name: &str, version: &str) -> String {
    format!("/v1/workflows/definitions/{namespace}/{name}/{version}")
}

/// The path of a definition named NAMESPACE/NAME/VERSION on the command line.
fn path_of_id(id: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = id.split('/').collect();
    let [namespace, name, version] = parts[..] else {
        anyhow::bail!("{id:?} is not NAMESPACE/NAME/VERSION");
    };
    shoal_workflows::check_id(namespace, name, version)?;
    Ok(definition_path(namespace, name, version))
}

pub async fn run(args: ClientArgs, command: WfCommand) -> anyhow::Result<()> {
    let client = args.connect()?;
    let answer = match command {
        WfCommand::Apply { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let definition = shoal_workflows::parse(&bytes)
                .with_context(|| format!("{} is not a definition Shoal runs", file.display()))?;
            let path =
                definition_path(&definition.namespace, &definition.name, &definition.version);
            let answer = client
                .request_json(Method::PUT, &path, &[], Some(&definition.document))
                .await?;
            if !args.json {
                let verb = if answer["created"] == Value::Bool(true) {
                    "published"
                } else {
                    "unchanged"
                };
                println!(
                    "{verb} {} (revision {})",
                    definition.key(),
                    answer["revision"]
                );
                return Ok(());
            }
            answer
        }
        WfCommand::Get { id } => {
            let answer = client
                .request_json(Method::GET, &path_of_id(&id)?, &[], None)
                .await?;
            if !args.json {
                println!("{}", serde_json::to_string_pretty(&answer["document"])?);
                return Ok(());
            }
            answer
        }
        WfCommand::Ls { namespace, name } => {
            let mut params = Vec::new();
            if let Some(namespace) = &namespace {
                params.push(("namespace", namespace.as_str()));
            }
            if let Some(name) = &name {
                params.push(("name", name.as_str()));
            }
            let answer = client
                .request_json(Method::GET, "/v1/workflows/definitions", &params, None)
                .await?;
            if !args.json {
                for definition in answer["definitions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    let text = |field: &str| definition[field].as_str().unwrap_or("").to_string();
                    println!(
                        "{}/{}/{}  revision {}  {}",
                        text("namespace"),
                        text("name"),
                        text("version"),
                        definition["revision"],
                        text("title")
                    );
                }
                return Ok(());
            }
            answer
        }
        WfCommand::Delete { id } => {
            let answer = client
                .request_json(Method::DELETE, &path_of_id(&id)?, &[], None)
                .await?;
            if !args.json {
                println!("deleted {id} (revision {})", answer["revision"]);
                return Ok(());
            }
            answer
        }
    };
    println!("{answer}");
    Ok(())
}
