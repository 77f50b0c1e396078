//! The real service control manager, through the `windows-service` crate.

use std::ffi::OsString;

use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceErrorControl, ServiceExitCode,
    ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState,
    ServiceType,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_sys::Win32::Foundation::{
    ERROR_INVALID_LEVEL, ERROR_SERVICE_DOES_NOT_EXIST, ERROR_SERVICE_NOT_ACTIVE,
};

use super::{Definition, Scm, ScmExit, ScmState, ScmStatus};
use crate::service::ServiceError;

/// The local computer's SCM.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemScm;

fn detail(error: &windows_service::Error) -> String {
    match error {
        windows_service::Error::Winapi(e) => e.to_string(),
        other => other.to_string(),
    }
}

fn os_code(error: &windows_service::Error) -> Option<i32> {
    match error {
        windows_service::Error::Winapi(e) => e.raw_os_error(),
        _ => None,
    }
}

/// A configuration level this SCM does not know (`ERROR_INVALID_LEVEL`; Windows has
/// them all since Vista, Wine lacks some) is worth a warning, not a failed install,
/// where the service runs correctly without it.
fn optional_level(what: &str, result: windows_service::Result<()>) -> windows_service::Result<()> {
    match result {
        Err(error) if os_code(&error) == Some(ERROR_INVALID_LEVEL as i32) => {
            tracing::warn!(%error, "this service control manager cannot set {what}; going on without");
            Ok(())
        }
        other => other,
    }
}

fn scm_error(op: &'static str, name: &str) -> impl FnOnce(windows_service::Error) -> ServiceError {
    let name = name.to_owned();
    move |error| ServiceError::Scm {
        op,
        name,
        detail: detail(&error),
    }
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, ServiceError> {
    ServiceManager::local_computer(None::<&str>, access).map_err(scm_error(
        "connect to (an elevated Administrator prompt is needed) for",
        super::SERVICE_NAME,
    ))
}

fn open(
    name: &str,
    access: ServiceAccess,
) -> Result<windows_service::service::Service, ServiceError> {
    manager(ServiceManagerAccess::CONNECT)?
        .open_service(name, access)
        .map_err(scm_error("open", name))
}

impl Scm for SystemScm {
    fn query(&self, name: &str) -> Result<Option<ScmStatus>, ServiceError> {
        let service = match manager(ServiceManagerAccess::CONNECT)?.open_service(
            name,
            ServiceAccess::QUERY_STATUS | ServiceAccess::QUERY_CONFIG,
        ) {
            Ok(service) => service,
            Err(e) if os_code(&e) == Some(ERROR_SERVICE_DOES_NOT_EXIST as i32) => return Ok(None),
            Err(e) => return Err(scm_error("open", name)(e)),
        };
        let status = service.query_status().map_err(scm_error("query", name))?;
        let config = service.query_config().map_err(scm_error("query", name))?;
        Ok(Some(ScmStatus {
            state: match status.current_state {
                ServiceState::Stopped => ScmState::Stopped,
                ServiceState::StartPending => ScmState::StartPending,
                ServiceState::StopPending => ScmState::StopPending,
                ServiceState::Running => ScmState::Running,
                ServiceState::ContinuePending => ScmState::ContinuePending,
                ServiceState::PausePending => ScmState::PausePending,
                ServiceState::Paused => ScmState::Paused,
            },
            pid: status.process_id,
            exit: match status.exit_code {
                ServiceExitCode::Win32(code) => ScmExit::Win32(code),
                ServiceExitCode::ServiceSpecific(code) => ScmExit::ServiceSpecific(code),
            },
            checkpoint: status.checkpoint,
            wait_hint: status.wait_hint,
            auto_start: config.start_type == ServiceStartType::AutoStart,
        }))
    }

    fn create(&self, definition: &Definition) -> Result<(), ServiceError> {
        let name = definition.name.as_str();
        let info = ServiceInfo {
            name: OsString::from(name),
            display_name: OsString::from(&definition.display_name),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path: definition.executable.clone(),
            launch_arguments: definition.arguments.clone(),
            dependencies: Vec::new(),
            // LocalSystem.
            account_name: None,
            account_password: None,
        };
        let service =
            manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?
                .create_service(
                    &info,
                    ServiceAccess::CHANGE_CONFIG
                        | ServiceAccess::QUERY_STATUS
                        | ServiceAccess::DELETE,
                )
                .map_err(scm_error("create", name))?;
        let actions = ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(definition.failure_reset_period),
            reboot_msg: None,
            command: None,
            actions: Some(
                definition
                    .restart_delays
                    .iter()
                    .map(|delay| ServiceAction {
                        action_type: ServiceActionType::Restart,
                        delay: *delay,
                    })
                    .collect(),
            ),
        };
        let configured = service
            .set_description(&definition.description)
            .and_then(|()| {
                optional_level(
                    "delayed auto-start",
                    service.set_delayed_auto_start(definition.delayed_auto_start),
                )
            })
            .and_then(|()| service.update_failure_actions(actions))
            .and_then(|()| {
                let flag = definition.failure_actions_on_non_crash_failures;
                let set = service.set_failure_actions_on_non_crash_failures(flag);
                // `false` is every SCM's default: not being able to say it changes nothing.
                if flag {
                    set
                } else {
                    optional_level("the failure-actions flag", set)
                }
            })
            .and_then(|()| service.set_preshutdown_timeout(definition.preshutdown_timeout));
        if let Err(error) = configured {
            // A service without its failure actions or timeout is not the one asked for.
            let _ = service.delete();
            return Err(scm_error("configure", name)(error));
        }
        Ok(())
    }

    fn start(&self, name: &str) -> Result<(), ServiceError> {
        open(name, ServiceAccess::START)?
            .start::<&str>(&[])
            .map_err(scm_error("start", name))
    }

    fn stop(&self, name: &str) -> Result<(), ServiceError> {
        match open(name, ServiceAccess::STOP)?.stop() {
            Ok(_) => Ok(()),
            // It stopped on its own in the meantime: what was asked for.
            Err(e) if os_code(&e) == Some(ERROR_SERVICE_NOT_ACTIVE as i32) => Ok(()),
            Err(e) => Err(scm_error("stop", name)(e)),
        }
    }

    fn delete(&self, name: &str) -> Result<(), ServiceError> {
        open(name, ServiceAccess::DELETE)?
            .delete()
            .map_err(scm_error("delete", name))
    }
}
