//! One wildcard reply subscription per purpose (publish acknowledgements,
//! direct gets), its messages routed to their request by subject.

/// One wildcard reply subscription, `<inbox>.<name>.>`, whose messages a
/// router task hands to `deliver` with their subject's tail (after the
/// prefix and its dot). Why one: a subscription per request costs a SUB
/// and an UNSUB each, and every subscription change invalidates
/// nats-server's subject-match cache that every publish goes through.
/// Dropping the router stops its task.
pub struct ReplyRouter {
    prefix: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ReplyRouter {
    pub async fn start(
        client: &async_nats::Client,
        name: &str,
        mut deliver: impl FnMut(&str, async_nats::Message) + Send + 'static,
    ) -> anyhow::Result<Self> {
        use futures::StreamExt as _;
        let prefix = format!("{}.{name}", client.new_inbox());
        let mut replies = client.subscribe(format!("{prefix}.>")).await?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let tail_from = prefix.len() + 1;
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = &mut stopped => return,
                    message = replies.next() => match message {
                        Some(message) => message,
                        None => return,
                    },
                };
                // The subject shares the message's bytes; cloning it is cheap.
                let subject = message.subject.clone();
                deliver(subject.get(tail_from..).unwrap_or_default(), message);
            }
        });
        Ok(Self {
            prefix,
            _stop: stop,
        })
    }

    /// The reply subject with this tail.
    pub fn reply_to(&self, tail: std::fmt::Arguments<'_>) -> String {
        use std::fmt::Write as _;
        let mut subject = String::with_capacity(self.prefix.len() + 42);
        write!(subject, "{}.{tail}", self.prefix).expect("writing to a String");
        subject
    }
}
