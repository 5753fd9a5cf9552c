//! Who may change the daemon's state: root, or members of a configured group. The check uses
//! the caller's credentials from the unix socket (`SO_PEERCRED`), never anything it claims.

use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

/// The caller's uid and gid as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Policy for state-changing calls.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// Members of this group (by gid, primary or supplementary) may change state too.
    pub admin_gid: Option<u32>,
}

impl AccessPolicy {
    /// Resolves a group name to its gid; unknown names are an error at startup.
    pub fn with_group(name: Option<&str>) -> Result<Self, String> {
        let Some(name) = name else {
            return Ok(Self::default());
        };
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(AccessPolicy {
                admin_gid: Some(g.gid.as_raw()),
            }),
            Ok(None) => Err(format!("group {name:?} does not exist")),
            Err(e) => Err(format!("looking up group {name:?}: {e}")),
        }
    }

    /// True if `caller` may change state.
    pub fn may_change_state(&self, caller: Caller) -> bool {
        if caller.uid == 0 {
            return true;
        }
        let Some(gid) = self.admin_gid else {
            return false;
        };
        if caller.gid == gid {
            return true;
        }
        user_in_group(caller.uid, gid)
    }

    /// Rejects the request unless its caller may change state.
    pub fn require_admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        match caller_of(req) {
            Some(c) if self.may_change_state(c) => Ok(()),
            Some(c) => Err(Status::permission_denied(format!(
                "uid {} may not change the agent's state: run as root or as a member of the daemon's admin group",
                c.uid
            ))),
            None => Err(Status::permission_denied(
                "caller credentials unavailable: state changes need the unix socket",
            )),
        }
    }
}

/// The caller's credentials, if the request came over the unix socket.
pub fn caller_of<T>(req: &Request<T>) -> Option<Caller> {
    let info = req.extensions().get::<UdsConnectInfo>()?;
    let cred = info.peer_cred?;
    Some(Caller {
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

fn user_in_group(uid: u32, gid: u32) -> bool {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return false;
    };
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => g.mem.contains(&user.name),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_always_allowed_others_need_the_group() {
        let none = AccessPolicy::default();
        assert!(none.may_change_state(Caller { uid: 0, gid: 0 }));
        assert!(!none.may_change_state(Caller {
            uid: 1000,
            gid: 1000
        }));
        let group = AccessPolicy {
            admin_gid: Some(4242),
        };
        assert!(group.may_change_state(Caller {
            uid: 1000,
            gid: 4242
        }));
        assert!(!group.may_change_state(Caller {
            uid: 1000,
            gid: 1000
        }));
    }

    #[test]
    fn unknown_group_is_an_error() {
        assert!(AccessPolicy::with_group(Some("no-such-group-netbird-agent")).is_err());
        assert!(AccessPolicy::with_group(Some("root")).unwrap().admin_gid == Some(0));
    }
}
