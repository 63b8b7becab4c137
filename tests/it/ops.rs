//! Running keygate: the deploy topology as processes, hot reload, and faults injected between
//! keygate and its upstream or its Redis.

mod deploy;
mod faults;
mod reload;
