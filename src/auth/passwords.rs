//! Password hashes and the bounded pool that verifies them.
//!
//! argon2 is slow and memory-hard on purpose (19 MiB and tens of milliseconds per check
//! with the default parameters), which makes every check an amplifier for anyone who can
//! reach the registry: a few hundred concurrent wrong passwords once took berth to
//! gigabytes of memory. So verification never runs on the async workers, nor on an
//! unbounded thread pool: a fixed set of threads, each reusing one memory buffer, takes
//! jobs from a short queue, and when that queue is full the caller is told to come back
//! later (`429`) at once. Memory for checks is therefore `workers × largest m_cost`,
//! whatever the load, and hashes whose parameters exceed berth's limits are refused when
//! a user is loaded, so a user record cannot raise that bound either.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq as _;
use tokio::sync::oneshot;

/// Largest argon2 memory cost berth verifies, in KiB (64 MiB).
pub const MAX_M_COST_KIB: u32 = 64 * 1024;
/// Largest argon2 time cost (passes) berth verifies.
pub const MAX_T_COST: u32 = 16;
/// Largest argon2 parallelism (lanes) berth verifies.
pub const MAX_P_COST: u32 = 8;

/// Why a password hash cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("not an argon2 PHC string (make one with `berth hash-password`): {0}")]
    Malformed(String),
    #[error(
        "argon2 parameters m={m_kib} KiB, t={t}, p={p} exceed berth's limits (m ≤ {MAX_M_COST_KIB} KiB, t ≤ {MAX_T_COST}, p ≤ {MAX_P_COST})"
    )]
    TooCostly { m_kib: u32, t: u32, p: u32 },
    #[error("hashing the password failed: {0}")]
    Hashing(String),
}

/// An argon2 hash taken apart once, ready to verify against.
#[derive(Debug, Clone)]
struct ParsedHash {
    algorithm: Algorithm,
    version: Version,
    params: Params,
    salt: Vec<u8>,
    expected: Vec<u8>,
}

fn parse(phc: &str) -> Result<ParsedHash, HashError> {
    let malformed = |e: &dyn std::fmt::Display| HashError::Malformed(e.to_string());
    let hash = argon2::PasswordHash::new(phc).map_err(|e| malformed(&e))?;
    let algorithm = Algorithm::try_from(hash.algorithm.as_str()).map_err(|e| malformed(&e))?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).map_err(|e| malformed(&e))?,
        None => Version::default(),
    };
    let params = Params::try_from(&hash).map_err(|e| malformed(&e))?;
    if params.m_cost() > MAX_M_COST_KIB
        || params.t_cost() > MAX_T_COST
        || params.p_cost() > MAX_P_COST
    {
        return Err(HashError::TooCostly {
            m_kib: params.m_cost(),
            t: params.t_cost(),
            p: params.p_cost(),
        });
    }
    let salt = hash
        .salt
        .as_ref()
        .ok_or_else(|| HashError::Malformed("the hash has no salt".into()))?
        .as_ref()
        .to_vec();
    let expected = hash
        .hash
        .as_ref()
        .ok_or_else(|| HashError::Malformed("the hash has no output".into()))?
        .as_bytes()
        .to_vec();
    Ok(ParsedHash {
        algorithm,
        version,
        params,
        salt,
        expected,
    })
}

/// Checks that `phc` is an argon2 hash berth can verify within its limits.
pub fn check_hash(phc: &str) -> Result<(), HashError> {
    parse(phc).map(|_| ())
}

/// Hashes `password` with argon2id, the default parameters and a random salt, as a PHC
/// string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
pub fn hash_password(password: &str) -> Result<String, HashError> {
    use argon2::PasswordHasher as _;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| HashError::Hashing(e.to_string()))?;
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Hashing(e.to_string()))
}

/// Verifies `password` against `phc` on the calling thread, reusing `memory` for the
/// argon2 blocks (grown to the hash's memory cost, which `parse` bounds).
fn verify_with(password: &[u8], phc: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(hash) = parse(phc) else {
        return false;
    };
    let blocks = hash.params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; hash.expected.len()];
    let argon = Argon2::new(hash.algorithm, hash.version, hash.params);
    argon
        .hash_password_into_with_memory(password, &hash.salt, &mut out, &mut memory[..blocks])
        .is_ok()
        && bool::from(out.ct_eq(&hash.expected))
}

/// Verifies on the calling thread (tests, tools). Servers use [`PasswordChecker`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    verify_with(password.as_bytes(), phc, &mut Vec::new())
}

/// The pool is full: come back after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks in progress; retry in {} s", .retry_after.as_secs().max(1))]
pub struct Busy {
    pub retry_after: Duration,
}

struct Job {
    password: String,
    hash: String,
    reply: oneshot::Sender<bool>,
}

/// A fixed pool of threads verifying argon2 hashes from a bounded queue.
#[derive(Clone)]
pub struct PasswordChecker {
    jobs: SyncSender<Job>,
    /// A hash of a random password: unknown users are checked against it, so they cost
    /// what a real user costs and cannot be told apart by timing.
    dummy: Arc<str>,
}

impl PasswordChecker {
    /// `workers` threads (at least one) and room for `queue` waiting checks.
    pub fn new(workers: usize, queue: usize) -> Self {
        let (jobs, receiver) = sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..workers.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("berth-argon2-{n}"))
                .spawn(move || work(&receiver))
                .expect("spawning a password-check thread");
        }
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).expect("the operating system provides randomness");
        let dummy = hash_password(&hex::encode(random)).expect("hashing a random password");
        PasswordChecker {
            jobs,
            dummy: dummy.into(),
        }
    }

    /// A pool sized for this machine: one thread per core, a queue of 16 per thread.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(cores, 16 * cores)
    }

    /// Whether `password` matches `phc`; `Busy` when the queue is full.
    pub async fn verify(&self, password: &str, phc: &str) -> Result<bool, Busy> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            password: password.to_string(),
            hash: phc.to_string(),
            reply,
        };
        match self.jobs.try_send(job) {
            Ok(()) => Ok(answer.await.unwrap_or(false)),
            Err(TrySendError::Full(_)) => Err(Busy {
                retry_after: Duration::from_secs(1),
            }),
            Err(TrySendError::Disconnected(_)) => Ok(false),
        }
    }

    /// Spends the work of one check on a hash nothing matches: the answer for an
    /// unknown user, given after as long as a wrong password takes.
    pub async fn verify_dummy(&self, password: &str) -> Result<(), Busy> {
        let dummy = self.dummy.clone();
        self.verify(password, &dummy).await.map(|_| ())
    }
}

fn work(receiver: &Mutex<Receiver<Job>>) {
    let mut memory = Vec::new();
    loop {
        let job = match receiver.lock() {
            Ok(receiver) => match receiver.recv() {
                Ok(job) => job,
                Err(_) => return, // every sender is gone
            },
            Err(_) => return,
        };
        // A client that hung up while queued needs no answer.
        if job.reply.is_closed() {
            continue;
        }
        let ok = verify_with(job.password.as_bytes(), &job.hash, &mut memory);
        let _ = job.reply.send(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_and_no_other() {
        let hash = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horsf", &hash));
    }

    #[test]
    fn each_new_hash_gets_its_own_random_salt() {
        let a = hash_password("same").unwrap();
        let b = hash_password("same").unwrap();
        assert_ne!(a, b);
        assert!(verify_password("same", &a) && verify_password("same", &b));
    }

    #[test]
    fn hashes_made_by_earlier_berths_still_verify() {
        // A hash with the fixed, name-derived salt berth used to give plain passwords.
        use argon2::PasswordHasher as _;
        let old = Argon2::default()
            .hash_password_with_salt(b"pw", &[7u8; 16])
            .unwrap()
            .to_string();
        assert!(check_hash(&old).is_ok());
        assert!(verify_password("pw", &old));
    }

    #[test]
    fn hashes_too_costly_to_verify_or_not_argon2_are_refused() {
        let base = hash_password("pw").unwrap();
        let costly = base.replace("m=19456", &format!("m={}", MAX_M_COST_KIB * 2));
        assert!(matches!(
            check_hash(&costly),
            Err(HashError::TooCostly { .. })
        ));
        assert!(
            !verify_password("pw", &costly),
            "never verified, so never allocated"
        );
        let slow = base.replace("t=2", "t=1000");
        assert!(matches!(
            check_hash(&slow),
            Err(HashError::TooCostly { .. })
        ));
        assert!(matches!(check_hash("plain"), Err(HashError::Malformed(_))));
        assert!(matches!(
            check_hash("$2b$12$abcdefghijklmnopqrstuv"),
            Err(HashError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn the_pool_answers_and_refuses_beyond_its_queue() {
        let hash = hash_password("pw").unwrap();
        let pool = PasswordChecker::new(1, 1);
        assert_eq!(pool.verify("pw", &hash).await, Ok(true));
        assert_eq!(pool.verify("nope", &hash).await, Ok(false));
        // One running, one queued; the rest are refused at once.
        let flood: Vec<_> = (0..20)
            .map(|_| {
                let pool = pool.clone();
                let hash = hash.clone();
                tokio::spawn(async move { pool.verify("nope", &hash).await })
            })
            .collect();
        let mut busy = 0;
        for task in flood {
            if task.await.unwrap().is_err() {
                busy += 1;
            }
        }
        assert!(busy >= 15, "only {busy} of 20 were refused");
    }
}
