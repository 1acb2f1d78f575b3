//! The `schema changes` check: what `postgres.capture_ddl` installs on the
//! source (shown in full, so enabling it is informed consent) and whether
//! the role and the server allow it: creating event triggers needs
//! superuser (on RDS/Aurora, membership in `rds_superuser`), and pgoutput
//! delivers logical messages from PostgreSQL 14 on.

use ferry_core::Error;
use ferry_core::config::Config;
use ferry_core::plan::Check;
use tokio_postgres::Client;

use super::SIDE;
use crate::connect::query_error;

const NAME: &str = "schema changes";

pub(super) async fn ddl_capture_check(
    client: &Client,
    config: &Config,
    version_num: u32,
) -> Result<Check, Error> {
    if !config.postgres.capture_ddl {
        return Ok(Check::pass(
            SIDE,
            NAME,
            "not captured (postgres.capture_ddl = false): columns added on the source are added on the target; \
             any other schema change of a carried table stops `ferry run` with the statement to run on the target. \
             Set postgres.capture_ddl = true to carry them",
        ));
    }
    let row = client
        .query_one(
            "SELECT current_user::text, r.rolsuper,
                    EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'rds_superuser'
                             AND pg_has_role(current_user, g.oid, 'MEMBER'))
               FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| query_error("reading the role's attributes", e))?;
    let (user, superuser, rds): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    Ok(verdict(config, version_num, &user, superuser, rds))
}

fn verdict(config: &Config, version_num: u32, user: &str, superuser: bool, rds: bool) -> Check {
    let installs = crate::ddl_capture::describe(config);
    if version_num < 140_000 {
        return Check::fail(
            SIDE,
            NAME,
            format!(
                "postgres.capture_ddl needs PostgreSQL 14 or newer (pgoutput delivers logical messages from 14 on); this server is {}",
                version_num / 10_000
            ),
            "set postgres.capture_ddl = false (schema changes then stop the run with the fix), or upgrade the source",
        );
    }
    if !superuser && !rds {
        let q = ferry_core::schema::quote_ident(user);
        return Check::fail(
            SIDE,
            NAME,
            format!(
                "postgres.capture_ddl: role {user} may not create event triggers; ferry {installs}"
            ),
            format!(
                "ALTER ROLE {q} SUPERUSER (RDS/Aurora: GRANT rds_superuser TO {q}), or set postgres.capture_ddl = false"
            ),
        );
    }
    Check::pass(
        SIDE,
        NAME,
        format!(
            "captured (postgres.capture_ddl = true, role {user}: {}): ferry {installs}",
            if superuser {
                "superuser"
            } else {
                "rds_superuser"
            }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::plan::CheckStatus;

    #[test]
    fn consent_version_and_privilege() {
        let config = Config::from_parts(
            "[source]\nurl = \"postgres://a@h/d\"\n[target]\nurl = \"postgres://a@h/e\"\n[postgres]\ncapture_ddl = true\n",
            "test",
            Vec::new(),
        )
        .unwrap();
        let c = verdict(&config, 130_000, "app", true, false);
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(c.detail.contains("PostgreSQL 14"), "{}", c.detail);
        let c = verdict(&config, 160_000, "app", false, false);
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(c.fix.unwrap().contains("GRANT rds_superuser TO \"app\""));
        let c = verdict(&config, 160_000, "app", false, true);
        assert_eq!(c.status, CheckStatus::Pass);
        assert!(
            c.detail.contains("ferry_ddl_end (ddl_command_end)"),
            "{}",
            c.detail
        );
        assert!(c.detail.contains("rds_superuser"), "{}", c.detail);
    }
}
