//! Running keygate: the deploy topology as processes, budgets held across replica processes, key
//! rotation driven by one replica at a time, hot reload, and faults injected between keygate and
//! its upstream or its Redis.

mod budget_accuracy;
mod deploy;
mod faults;
mod listen;
mod reload;
mod rotation;
