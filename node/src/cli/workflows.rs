//! `shoal wf`: publish, read, list and delete workflow definitions; start,
//! read, list, suspend, resume, cancel and retry instances. `apply`
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
    /// Start an instance of NAMESPACE/NAME (its newest version) or of
    /// NAMESPACE/NAME/VERSION. Starting again with the same --id returns
    /// that instance.
    Start {
        workflow: String,
        /// The input, as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// The instance id (1-128 of A-Z a-z 0-9 . _ -); generated if absent.
        #[arg(long)]
        id: Option<String>,
    },
    /// Print an instance: status, current task, data, outcomes, history.
    Instance { id: String },
    /// List instances (one line each), filtered.
    Instances {
        /// Only instances of NAMESPACE/NAME.
        #[arg(long)]
        workflow: Option<String>,
        /// pending, running, waiting, suspended, cancelled, faulted or completed.
        #[arg(long)]
        status: Option<String>,
        /// A jq predicate over the instance, e.g. '.input.total > 100'.
        #[arg(long = "where")]
        predicate: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Suspend an instance (its timers and events wait until it resumes).
    Suspend { id: String },
    /// Resume a suspended instance.
    Resume { id: String },
    /// Cancel an unfinished instance.
    Cancel { id: String },
    /// Run a faulted instance again from its failed task.
    Retry { id: String },
}

/// NAMESPACE/NAME on the command line.
fn workflow_of(text: &str) -> anyhow::Result<(&str, &str)> {
    let Some((namespace, name)) = text.split_once('/') else {
        anyhow::bail!("{text:?} is not NAMESPACE/NAME");
    };
    shoal_workflows::check_id(namespace, name, "0.0.0")?;
    Ok((namespace, name))
}

fn print_instance_line(instance: &Value) {
    let text = |field: &str| instance[field].as_str().unwrap_or("").to_string();
    println!(
        "{}  {}/{}/{}  {}  {}",
        text("id"),
        text("namespace"),
        text("name"),
        text("version"),
        text("status"),
        text("current_task")
    );
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
    let action = match &command {
        WfCommand::Suspend { .. } => "suspend",
        WfCommand::Resume { .. } => "resume",
        WfCommand::Cancel { .. } => "cancel",
        WfCommand::Retry { .. } => "retry",
        _ => "",
    };
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
        WfCommand::Start {
            workflow,
            input,
            id,
        } => {
            let (namespace, name, version) = match workflow.matches('/').count() {
                2 => {
                    let (rest, version) = workflow.rsplit_once('/').unwrap_or_default();
                    let (namespace, name) = workflow_of(rest)?;
                    shoal_workflows::check_id(namespace, name, version)?;
                    (namespace, name, Some(version))
                }
                _ => {
                    let (namespace, name) = workflow_of(&workflow)?;
                    (namespace, name, None)
                }
            };
            let input: Value = serde_json::from_str(&input).context("--input is not JSON")?;
            let mut body = serde_json::json!({ "input": input });
            if let Some(id) = id {
                body["id"] = Value::String(id);
            }
            if let Some(version) = version {
                body["version"] = Value::String(version.to_string());
            }
            let path = format!("/v1/workflows/{namespace}/{name}/instances");
            let answer = client
                .request_json(Method::POST, &path, &[], Some(&body))
                .await?;
            if !args.json {
                print_instance_line(&answer);
                return Ok(());
            }
            answer
        }
        WfCommand::Instance { id } => {
            let path = format!("/v1/workflows/instances/{id}");
            let answer = client.request_json(Method::GET, &path, &[], None).await?;
            if !args.json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            answer
        }
        WfCommand::Instances {
            workflow,
            status,
            predicate,
            limit,
        } => {
            let limit = limit.to_string();
            let mut params = vec![("limit", limit.as_str())];
            if let Some(workflow) = &workflow {
                let (namespace, name) = workflow_of(workflow)?;
                params.push(("namespace", namespace));
                params.push(("name", name));
            }
            if let Some(status) = &status {
                params.push(("status", status.as_str()));
            }
            if let Some(predicate) = &predicate {
                params.push(("where", predicate.as_str()));
            }
            let answer = client
                .request_json(Method::GET, "/v1/workflows/instances", &params, None)
                .await?;
            if !args.json {
                for instance in answer["instances"].as_array().cloned().unwrap_or_default() {
                    print_instance_line(&instance);
                }
                return Ok(());
            }
            answer
        }
        WfCommand::Suspend { id }
        | WfCommand::Resume { id }
        | WfCommand::Cancel { id }
        | WfCommand::Retry { id } => {
            let path = format!("/v1/workflows/instances/{id}/{action}");
            let answer = client.request_json(Method::POST, &path, &[], None).await?;
            if !args.json {
                print_instance_line(&answer);
                return Ok(());
            }
            answer
        }
    };
    println!("{answer}");
    Ok(())
}
