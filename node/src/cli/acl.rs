//! `shoal acl ...`: bootstrap, tokens, roles and policies.

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};
use shoal_client::Method;

use super::client::ClientArgs;

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Create the first management token (once per cluster; needs no token). Prints its
    /// secret, which cannot be shown again.
    Bootstrap,
    /// Show the token this command sends (--token / SHOAL_TOKEN).
    Whoami,
    /// Create, list, read and delete policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Create, list, read and delete roles (named groups of policies).
    Role {
        #[command(subcommand)]
        command: RoleCommand,
    },
    /// Create, list, read and delete (revoke) tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Create or replace a policy from --rule flags (or a JSON file with --file).
    Create {
        name: String,
        /// A rule RESOURCE:MATCH:ACCESS, e.g. `kv:config/orders/:read`, `topic:orders.>:write`,
        /// `operator::read` (repeatable). RESOURCE is kv, leases, topic, kafka, logs, delivery,
        /// workflows, operator or acl; ACCESS is read, write or deny.
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// A JSON file with the policy ({"description": ..., "rules": [...]}); `-` reads stdin.
        #[arg(long, conflicts_with = "rules")]
        file: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List policies.
    Ls,
    /// Print a policy.
    Get { name: String },
    /// Delete a policy.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Create or replace a role.
    Create {
        name: String,
        /// A policy of the role (repeatable).
        #[arg(long = "policy", required = true)]
        policies: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List roles.
    Ls,
    /// Print a role.
    Get { name: String },
    /// Delete a role.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; prints its accessor id and its secret (shown only this once).
    Create {
        /// A policy of the token (repeatable).
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// A role of the token (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Refuse the token after this long, e.g. 24h or 30d.
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
    },
    /// List tokens (without secrets).
    Ls,
    /// Print a token (without its secret).
    Get { accessor_id: String },
    /// Delete (revoke) a token.
    Delete { accessor_id: String },
}

/// `RESOURCE:MATCH:ACCESS` as a rule's JSON.
fn parse_rule(text: &str) -> anyhow::Result<Value> {
    let (resource, rest) = text
        .split_once(':')
        .with_context(|| format!("rule {text:?} is not RESOURCE:MATCH:ACCESS"))?;
    let (pattern, access) = rest
        .rsplit_once(':')
        .with_context(|| format!("rule {text:?} is not RESOURCE:MATCH:ACCESS"))?;
    Ok(json!({"resource": resource, "match": pattern, "access": access}))
}

fn read_json(file: &str) -> anyhow::Result<Value> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the policy from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("{file} is not JSON"))
}

fn print_token(token: &Value) {
    let field = |name: &str| token[name].as_str().unwrap_or_default().to_string();
    let list = |name: &str| {
        token[name]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    println!("accessor_id: {}", field("accessor_id"));
    if let Some(secret) = token["secret"].as_str() {
        println!("secret:      {secret}");
    }
    println!("description: {}", field("description"));
    println!("policies:    {}", list("policies"));
    println!("roles:       {}", list("roles"));
    match token["expires_at_ms"].as_u64() {
        Some(at) => println!("expires:     {}", format_ms(at)),
        None => println!("expires:     never"),
    }
}

fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

pub async fn run(args: ClientArgs, command: AclCommand) -> anyhow::Result<()> {
    let client = args.connect()?;
    let call = |method: Method, path: String, body: Option<Value>| {
        let client = client.clone();
        async move { client.request_json(method, &path, &[], body.as_ref()).await }
    };
    let answer = match command {
        AclCommand::Bootstrap => {
            let token = call(Method::POST, "/v1/acl/bootstrap".into(), None).await?;
            if !args.json {
                print_token(&token);
                eprintln!("keep the secret safe: it is not stored and cannot be shown again");
                return Ok(());
            }
            token
        }
        AclCommand::Whoami => call(Method::GET, "/v1/acl/whoami".into(), None).await?,
        AclCommand::Policy { command } => match command {
            PolicyCommand::Create {
                name,
                rules,
                file,
                description,
            } => {
                let body = match file {
                    Some(file) => read_json(&file)?,
                    None => {
                        if rules.is_empty() {
                            bail!("give at least one --rule, or --file");
                        }
                        let rules = rules
                            .iter()
                            .map(|rule| parse_rule(rule))
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        json!({"description": description, "rules": rules})
                    }
                };
                call(Method::PUT, format!("/v1/acl/policies/{name}"), Some(body)).await?
            }
            PolicyCommand::Ls => {
                let list = call(Method::GET, "/v1/acl/policies".into(), None).await?;
                if !args.json {
                    for policy in list["policies"].as_array().into_iter().flatten() {
                        println!(
                            "{}\t{} rules\t{}",
                            policy["name"].as_str().unwrap_or_default(),
                            policy["rules"].as_array().map(Vec::len).unwrap_or(0),
                            policy["description"].as_str().unwrap_or_default()
                        );
                    }
                    return Ok(());
                }
                list
            }
            PolicyCommand::Get { name } => {
                call(Method::GET, format!("/v1/acl/policies/{name}"), None).await?
            }
            PolicyCommand::Delete { name } => {
                call(Method::DELETE, format!("/v1/acl/policies/{name}"), None).await?
            }
        },
        AclCommand::Role { command } => match command {
            RoleCommand::Create {
                name,
                policies,
                description,
            } => {
                let body = json!({"description": description, "policies": policies});
                call(Method::PUT, format!("/v1/acl/roles/{name}"), Some(body)).await?
            }
            RoleCommand::Ls => {
                let list = call(Method::GET, "/v1/acl/roles".into(), None).await?;
                if !args.json {
                    for role in list["roles"].as_array().into_iter().flatten() {
                        println!(
                            "{}\t{}\t{}",
                            role["name"].as_str().unwrap_or_default(),
                            role["policies"],
                            role["description"].as_str().unwrap_or_default()
                        );
                    }
                    return Ok(());
                }
                list
            }
            RoleCommand::Get { name } => {
                call(Method::GET, format!("/v1/acl/roles/{name}"), None).await?
            }
            RoleCommand::Delete { name } => {
                call(Method::DELETE, format!("/v1/acl/roles/{name}"), None).await?
            }
        },
        AclCommand::Token { command } => match command {
            TokenCommand::Create {
                policies,
                roles,
                description,
                expires_in,
            } => {
                let body = json!({
                    "description": description,
                    "policies": policies,
                    "roles": roles,
                    "expires_in_secs": expires_in.map(|d| std::time::Duration::from(d).as_secs().max(1)),
                });
                let token = call(Method::POST, "/v1/acl/tokens".into(), Some(body)).await?;
                if !args.json {
                    print_token(&token);
                    return Ok(());
                }
                token
            }
            TokenCommand::Ls => {
                let list = call(Method::GET, "/v1/acl/tokens".into(), None).await?;
                if !args.json {
                    for token in list["tokens"].as_array().into_iter().flatten() {
                        println!(
                            "{}\t{}",
                            token["accessor_id"].as_str().unwrap_or_default(),
                            token["description"].as_str().unwrap_or_default()
                        );
                    }
                    return Ok(());
                }
                list
            }
            TokenCommand::Get { accessor_id } => {
                let token =
                    call(Method::GET, format!("/v1/acl/tokens/{accessor_id}"), None).await?;
                if !args.json {
                    print_token(&token);
                    return Ok(());
                }
                token
            }
            TokenCommand::Delete { accessor_id } => {
                call(
                    Method::DELETE,
                    format!("/v1/acl/tokens/{accessor_id}"),
                    None,
                )
                .await?
            }
        },
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
