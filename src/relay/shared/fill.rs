//! Filling a gap in a head stream: sessions moved to another node
//! (`failover`) may have been given head N on the lost node when the new
//! one's first is N+k. Heads N+1..N+k-1 are fetched from the new node
//! (Substrate: `chain_getBlockHash`, then `chain_getHeader`; Ethereum:
//! `eth_getBlockByNumber`, whose block carries every header field of a
//! `newHeads` notification) and given to them first; notifications that
//! come meanwhile wait, in order.

use std::rc::Rc;

use crate::jsonrpc;

use super::conn::{Conn, SubCall};
use super::request::send_own;
use super::topics::{notification, notify, Topic};

/// A gap being filled on a numbered stream.
pub struct Fill {
    /// The missing block numbers, ascending.
    numbers: Vec<u64>,
    hashes: Vec<Option<Box<[u8]>>>,
    headers: Vec<Option<Box<[u8]>>>,
    /// Answers still to come in the current step.
    outstanding: usize,
    /// Notifications held meanwhile (whole messages).
    pub held: Vec<Box<[u8]>>,
    /// The notification method to give the filled headers.
    method: Box<[u8]>,
}

/// Ask `conn` for the hashes of blocks `from..n`, holding `msg` (head `n`)
/// and whatever follows until their headers are in.
pub(super) fn start_fill(conn: &Conn, t: &mut Topic, from: u64, n: u64, method: &[u8], msg: &[u8]) {
    let numbers: Vec<u64> = (from..n).collect();
    crate::debug!("filling heads {from}..{} for sessions moved here", n - 1);
    let ethereum = super::topics::split_key(&t.key).0 == b"eth_subscribe";
    for (i, k) in numbers.iter().enumerate() {
        if ethereum {
            // One step: the block by number (its header fields, and more).
            let params = format!("[\"0x{k:x}\",false]");
            let call = SubCall::Fill(t.key.clone(), i as u32, true);
            send_own(conn, b"eth_getBlockByNumber", params.as_bytes(), call);
        } else {
            let params = format!("[{k}]");
            let call = SubCall::Fill(t.key.clone(), i as u32, false);
            send_own(conn, b"chain_getBlockHash", params.as_bytes(), call);
        }
    }
    t.fill = Some(Fill {
        outstanding: numbers.len(),
        hashes: vec![None; numbers.len()],
        headers: vec![None; numbers.len()],
        numbers,
        held: vec![Box::from(msg)],
        method: Box::from(method),
    });
}

/// An answer to a gap fill's request: a hash (`header == false`), or a header.
pub fn filled(conn: &Rc<Conn>, key: &[u8], i: u32, header: bool, msg: &[u8]) {
    let result = jsonrpc::peek(msg)
        .and_then(|p| p.result)
        .filter(|r| *r != b"null")
        .map(Box::<[u8]>::from);
    let i = i as usize;
    let next = {
        let mut topics = conn.topics.borrow_mut();
        let Some(fill) = topics.get_mut(key).and_then(|t| t.fill.as_mut()) else {
            return;
        };
        if i >= fill.numbers.len() {
            return;
        }
        if header {
            fill.headers[i] = result;
        } else {
            fill.hashes[i] = result;
        }
        fill.outstanding = fill.outstanding.saturating_sub(1);
        if fill.outstanding > 0 {
            return;
        }
        if !header && fill.hashes.iter().all(Option::is_some) {
            // Step two: the headers.
            fill.outstanding = fill.numbers.len();
            let hashes: Vec<Box<[u8]>> = fill.hashes.iter().flatten().cloned().collect();
            Some(hashes)
        } else {
            None
        }
    };
    if let Some(hashes) = next {
        for (i, h) in hashes.iter().enumerate() {
            let mut params = b"[".to_vec();
            params.extend_from_slice(h);
            params.push(b']');
            send_own(
                conn,
                b"chain_getHeader",
                &params,
                SubCall::Fill(Box::from(key), i as u32, true),
            );
        }
        return;
    }
    finish_fill(conn, key);
}

/// The gap's headers are in (or could not be had): deliver them to the
/// sessions that miss them, in order, then what was held.
fn finish_fill(conn: &Rc<Conn>, key: &[u8]) {
    let fill = {
        let mut topics = conn.topics.borrow_mut();
        let Some(t) = topics.get_mut(key) else {
            return;
        };
        let Some(fill) = t.fill.take() else {
            return;
        };
        for (n, h) in fill.numbers.iter().zip(&fill.headers) {
            if let Some(h) = h {
                for m in &mut t.members {
                    if m.floor > 0 && m.floor < *n {
                        if let Some(s) = m.session.upgrade() {
                            notify(&s, &fill.method, &m.id, h);
                        }
                        m.floor = *n;
                    }
                }
            }
        }
        // A header that could not be had is not asked for again.
        let last = fill.numbers.last().copied().unwrap_or(0);
        for m in &mut t.members {
            if m.floor > 0 {
                m.floor = m.floor.max(last);
            }
        }
        fill
    };
    let sub = conn
        .topics
        .borrow()
        .get(key)
        .and_then(|t| t.node_sub.clone());
    if let Some(sub) = sub {
        for held in fill.held {
            notification(conn, &sub, &held);
        }
    }
}
