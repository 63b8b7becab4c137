//! Running keygate: the deploy topology as processes, budgets held across replica processes, hot
//! reload, and faults injected between keygate and its upstream or its Redis.

mod budget_accuracy;
mod deploy;
mod faults;
mod reload;
