-- closed.example's own address takes mail for closed.example only (550 5.7.1).
dofile(common)
local conn = connect("127.0.0.3", "MTOTHER")
mail_from(conn, SMFIR_CONTINUE, "<sender@x.test>")
rcpt_to(conn, "<someone@elsewhere.test>", SMFIR_REPLYCODE)
rcpt_to(conn, "<alice@abc.example>", SMFIR_REPLYCODE)
rcpt_to(conn, "<carol>", SMFIR_CONTINUE)
passed(conn)
