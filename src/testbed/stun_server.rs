//! A STUN server for the testbed: answers Binding requests with the source address
//! (XOR-MAPPED-ADDRESS), which is all ICE needs to learn server-reflexive candidates.

use std::net::SocketAddr;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A running STUN server; stopped on drop.
pub struct StunServerHandle {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Starts the server on `addr`.
pub async fn start(addr: SocketAddr) -> std::io::Result<StunServerHandle> {
    let sock = UdpSocket::bind(addr).await?;
    let addr = sock.local_addr()?;
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            if let Some(tid) = crate::ice::stun::parse_binding_request(&buf[..n]) {
                let _ = sock
                    .send_to(&crate::ice::stun::binding_response(tid, from), from)
                    .await;
            }
        }
    });
    Ok(StunServerHandle { addr, task })
}

impl StunServerHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StunServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_with_the_source_address() {
        let s = start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(&crate::ice::stun::binding_request([3; 12]), s.addr())
            .await
            .unwrap();
        let mut buf = [0u8; 100];
        let (n, _) = c.recv_from(&mut buf).await.unwrap();
        let (tid, mapped) = crate::ice::stun::parse_binding_response(&buf[..n]).unwrap();
        assert_eq!(tid, [3; 12]);
        assert_eq!(mapped, c.local_addr().unwrap());
        // Garbage is ignored, the server keeps answering.
        c.send_to(b"garbage", s.addr()).await.unwrap();
        c.send_to(&crate::ice::stun::binding_request([4; 12]), s.addr())
            .await
            .unwrap();
        let (n, _) = c.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            crate::ice::stun::parse_binding_response(&buf[..n])
                .unwrap()
                .0,
            [4; 12]
        );
    }
}
