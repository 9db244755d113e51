//! version, info, events, runtime-config.

use anyhow::{Context, Result};
use futures_util::StreamExt;
use k8s_cri::v1 as cri;

use super::{print_status_data, StatusData};
use crate::cli::{DataFormat, EventsArgs, InfoArgs, StatusFormat};
use crate::client::{Clients, RpcError};
use crate::output::Table;
use crate::proto::{to_json, Json, JsonStyle};

/// The CRI API version berthctl speaks.
const CRI_VERSION: &str = "v1";

pub async fn version(c: &mut Clients) -> Result<()> {
    let mut rt = c.runtime().await?;
    let req = cri::VersionRequest {
        version: CRI_VERSION.into(),
    };
    let r = c
        .call("Version", c.deadline(), req, |r| rt.version(r))
        .await
        .context("getting the runtime version")?;
    // Go's Println puts a space between its two operands.
    println!("Version:  {}", r.version);
    println!("RuntimeName:  {}", r.runtime_name);
    println!("RuntimeVersion:  {}", r.runtime_version);
    println!("RuntimeApiVersion:  {}", r.runtime_api_version);
    Ok(())
}

pub async fn info(c: &mut Clients, a: InfoArgs) -> Result<()> {
    let mut rt = c.runtime().await?;
    let req = cri::StatusRequest { verbose: !a.quiet };
    let r = c
        .call("Status", c.deadline(), req, |r| rt.status(r))
        .await
        .context("getting status of runtime")?;
    let status = to_json(&r.status.clone().unwrap_or_default(), JsonStyle::Full);
    let mut data = StatusData::new(status, r.info);
    if !r.runtime_handlers.is_empty() {
        data.runtime_handlers = Some(Json::Array(
            r.runtime_handlers
                .iter()
                .map(|h| to_json(h, JsonStyle::Compact))
                .collect(),
        ));
    }
    data.features = r.features.as_ref().map(|f| to_json(f, JsonStyle::Compact));
    let format = match a.output {
        DataFormat::Json => StatusFormat::Json,
        DataFormat::Yaml => StatusFormat::Yaml,
    };
    print_status_data(&[data], format)
}

pub async fn events(c: &mut Clients, a: EventsArgs) -> Result<()> {
    let mut rt = c.runtime().await?;
    // A stream: no deadline.
    let mut stream = c
        .call("GetContainerEvents", None, cri::GetEventsRequest {}, |r| {
            rt.get_container_events(r)
        })
        .await
        .context("getting container events")?;
    while let Some(event) = stream.next().await {
        let event = event
            .map_err(RpcError)
            .context("getting container events")?;
        if c.debug {
            crate::client::debug_line(format!("ContainerEventResponse: {event:?}"));
        }
        let json = to_json(&event, JsonStyle::Full);
        match a.output {
            DataFormat::Json => println!("{}", json.pretty()),
            DataFormat::Yaml => print!("---\n{}", json.yaml()),
        }
    }
    Ok(())
}

pub async fn runtime_config(c: &mut Clients) -> Result<()> {
    let mut rt = c.runtime().await?;
    let r = c
        .call(
            "RuntimeConfig",
            c.deadline(),
            cri::RuntimeConfigRequest {},
            |r| rt.runtime_config(r),
        )
        .await
        .context("get runtime config: call RuntimeConfig RPC")?;
    let mut table = Table::new(10, 3);
    if let Some(linux) = &r.linux {
        let driver = cri::CgroupDriver::try_from(linux.cgroup_driver)
            .map(|d| d.as_str_name().to_owned())
            .unwrap_or_else(|_| linux.cgroup_driver.to_string());
        table.row(["cgroup driver:".to_owned(), driver]);
    }
    table.print();
    Ok(())
}
