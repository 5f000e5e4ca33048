//! The checkpoint formats (descriptor, HEAD, task report), where they live in object storage,
//! and the store that reads and writes them. The checkpoint protocol itself (takeover, upload,
//! restore) is the worker's (`sluice_worker::checkpoint`).

pub mod descriptor;
pub mod layout;
pub mod savepoint;
pub mod store;
