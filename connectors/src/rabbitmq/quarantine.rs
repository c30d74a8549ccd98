//! Where an event that cannot be delivered as configured goes: to the quarantine exchange,
//! when there is one and it has not already failed for the event, or else to the pipeline's
//! quarantine, with a reason a person can act on.

use sluice_pipeline::Event;

use super::lane::Purpose;
use super::message::{Message, MessageBuilder};

/// Where an undeliverable event goes.
#[derive(Debug)]
pub(crate) enum Route {
    /// Published to the quarantine exchange as this message, for this (quarantine) purpose
    /// (boxed: rare and large).
    Exchange(Box<Message>, Purpose),
    /// To the pipeline's quarantine, for this reason.
    Pipeline(String),
}

/// Where `event`, last published for `purpose`, goes for `reason`. `returned`: the message as
/// the broker returned it, whose routing key, properties and body the quarantined copy keeps.
/// An event the quarantine exchange itself failed to take goes to the pipeline with both
/// reasons.
pub(crate) fn divert(
    builder: &MessageBuilder,
    event: &Event,
    purpose: &Purpose,
    reason: String,
    returned: Option<&Message>,
) -> Route {
    if let Purpose::Quarantine { reason: first, .. } = purpose {
        return Route::Pipeline(format!("{first}; then the quarantine exchange: {reason}"));
    }
    match quarantined(builder, event, &reason, returned) {
        Some(message) => Route::Exchange(
            Box::new(message),
            Purpose::Quarantine {
                reason,
                returned: returned.is_some(),
            },
        ),
        None => Route::Pipeline(reason),
    }
}

/// The message a record quarantined for `reason` is published as again (a record holds no
/// message between attempts); `returned`: the broker had returned its delivery, so the copy
/// keeps the delivery's properties and body.
pub(crate) fn rebuild(
    builder: &MessageBuilder,
    event: &Event,
    reason: &str,
    returned: bool,
) -> Result<Message, String> {
    let published = if returned {
        builder.build(event).ok()
    } else {
        None
    };
    quarantined(builder, event, reason, published.as_ref())
        .ok_or_else(|| format!("{reason} (and there is no quarantine exchange)"))
}

/// `event` as a message to the quarantine exchange, if there is one.
fn quarantined(
    builder: &MessageBuilder,
    event: &Event,
    reason: &str,
    published: Option<&Message>,
) -> Option<Message> {
    let routing_key = match published {
        Some(message) => message.routing_key.clone(),
        None => builder.routing_key_or_empty(event),
    };
    let published = published.map(|m| (&m.properties, m.body.clone()));
    builder.quarantine(event, reason, routing_key, published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rabbitmq::message::tests::{builder, event, header_text};
    use amq_protocol::types::ShortString;
    use bytes::Bytes;
    use sluice_pipeline::runtime::QUARANTINE_REASON_HEADER;

    const WITH_EXCHANGE: &str = "quarantine_exchange = \"sluice.quarantine\"";

    fn returned() -> Message {
        let mut message = builder("").build(&event()).unwrap();
        message.routing_key = ShortString::from("as.returned");
        message.body = Bytes::from_static(b"as returned");
        message
    }

    #[test]
    fn an_undeliverable_event_goes_to_the_exchange_for_its_reason() {
        let b = builder(WITH_EXCHANGE);
        let Route::Exchange(m, purpose) =
            divert(&b, &event(), &Purpose::Deliver, "why".into(), None)
        else {
            panic!("to the exchange")
        };
        assert_eq!(m.exchange.as_str(), "sluice.quarantine");
        assert_eq!(m.routing_key.as_str(), "outbox.event.order");
        assert_eq!(m.body, event().payload);
        assert_eq!(header_text(&m.properties, QUARANTINE_REASON_HEADER), "why");
        assert_eq!(
            purpose,
            Purpose::Quarantine {
                reason: "why".into(),
                returned: false
            }
        );
    }

    #[test]
    fn a_returned_message_is_quarantined_as_it_came_back() {
        let b = builder(WITH_EXCHANGE);
        let back = returned();
        let route = divert(
            &b,
            &event(),
            &Purpose::Deliver,
            "NO_ROUTE".into(),
            Some(&back),
        );
        let Route::Exchange(m, Purpose::Quarantine { returned: true, .. }) = route else {
            panic!("to the exchange, as returned: {route:?}")
        };
        assert_eq!(m.routing_key.as_str(), "as.returned");
        assert_eq!(m.body, back.body);
    }

    #[test]
    fn without_an_exchange_or_once_it_failed_the_event_goes_to_the_pipeline() {
        let route = divert(
            &builder(""),
            &event(),
            &Purpose::Deliver,
            "why".into(),
            None,
        );
        assert!(
            matches!(&route, Route::Pipeline(reason) if reason == "why"),
            "{route:?}"
        );
        let failed = Purpose::Quarantine {
            reason: "why".into(),
            returned: false,
        };
        let route = divert(
            &builder(WITH_EXCHANGE),
            &event(),
            &failed,
            "NO_ROUTE".into(),
            None,
        );
        assert!(
            matches!(&route, Route::Pipeline(r) if r == "why; then the quarantine exchange: NO_ROUTE"),
            "{route:?}"
        );
    }

    #[test]
    fn a_quarantined_record_is_rebuilt_as_it_was_first_quarantined() {
        let b = builder(WITH_EXCHANGE);
        let first = divert(&b, &event(), &Purpose::Deliver, "why".into(), None);
        let Route::Exchange(first, _) = first else {
            panic!("to the exchange")
        };
        let again = rebuild(&b, &event(), "why", false).unwrap();
        assert_eq!(
            (again.routing_key, again.body, again.properties),
            (first.routing_key, first.body, first.properties)
        );
        let published = b.build(&event()).unwrap();
        let again = rebuild(&b, &event(), "NO_ROUTE", true).unwrap();
        assert_eq!(
            again.properties.content_type(),
            published.properties.content_type()
        );
        assert_eq!(
            rebuild(&builder(""), &event(), "why", false).unwrap_err(),
            "why (and there is no quarantine exchange)"
        );
    }
}
