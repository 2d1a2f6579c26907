mod aliases;
mod chains;
mod cli;
mod events;
mod hardening;
mod proxy;
mod support;
mod watcher;
